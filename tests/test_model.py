"""The network and its samplers, checked against an independent plain implementation (reference_noisear)."""

from __future__ import annotations

import math

import pytest
import reference_noisear as reference
import torch
from builders import (
    HUNYUAN_DIT,
    SDXL,
    TINY,
    model_from_state,
    published_shapes,
    random_eps,
    random_model,
    random_state_dict,
    random_text,
)

from noisear import NoiseAR, NoiseARConfig, NoiseARInputError, standard_normal
from noisear.model import CACHED_DECODING, _CachedDecoder
from noisear.patches import patchify

TINY_CONFIGS = {
    "tiny": TINY,
    # 2 layers, 2 heads, 12-d text through dim_adapter, 2x4 grid of 2x2 patches
    "deep-nonsquare-adapter": NoiseARConfig(
        patch_size=2, channels=4, latent_height=4, latent_width=8, d_model=24, d_ff=32, n_layers=2, n_heads=2, text_dim=12
    ),
    # 1x1 patches on a 3x2 grid, 4 heads, 3 layers
    "pixel-patches": NoiseARConfig(
        patch_size=1, channels=2, latent_height=3, latent_width=2, d_model=32, d_ff=16, n_layers=3, n_heads=4, text_dim=32
    ),
}


def text_mask_for(batch: int, tokens: int) -> torch.Tensor:
    """[batch, tokens] bool: item i attends to its first tokens - i tokens (at least one)."""
    lengths = torch.tensor([max(tokens - i, 1) for i in range(batch)])
    return torch.arange(tokens)[None, :] < lengths[:, None]


def as_double(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.double() for key, value in state.items()}


# The published layout ----------------------------------------------------------------------------

DOC_TABLE_SDXL = {  # the state-dict table of official-noisear.md, written out for SDXL
    "learnable_start_token_emb": (2048,),
    "pos_encoding": (1, 17, 2048),
    "latent_patch_encoder.0.weight": (2048, 4096),
    "latent_patch_encoder.0.bias": (2048,),
    "latent_patch_encoder.2.weight": (2048, 2048),
    "latent_patch_encoder.2.bias": (2048,),
    **{
        f"{a}.0.{p}": s
        for a in ("self_attn_layers", "cross_attn_layers")
        for p, s in (
            ("in_proj_weight", (6144, 2048)),
            ("in_proj_bias", (6144,)),
            ("out_proj.weight", (2048, 2048)),
            ("out_proj.bias", (2048,)),
        )
    },
    **{f"{n}.0.{p}": (2048,) for n in ("self_attn_norm", "cross_attn_norm", "ffn_norm") for p in ("weight", "bias")},
    "ffn_layers.0.0.weight": (4096, 2048),
    "ffn_layers.0.0.bias": (4096,),
    "ffn_layers.0.3.weight": (2048, 4096),
    "ffn_layers.0.3.bias": (2048,),
    **{
        f"{h}.{p}": s
        for h in ("prediction_head_mu", "prediction_head_logvar")
        for p, s in (("0.weight", (4096, 2048)), ("0.bias", (4096,)), ("2.weight", (4096, 4096)), ("2.bias", (4096,)))
    },
}
DOC_TABLE_HUNYUAN = {**DOC_TABLE_SDXL, "dim_adapter.weight": (2048, 1024), "dim_adapter.bias": (2048,)}


@pytest.mark.parametrize(
    "config, table, n_keys, n_parameters",
    [(SDXL, DOC_TABLE_SDXL, 32, 113_301_504), (HUNYUAN_DIT, DOC_TABLE_HUNYUAN, 34, 115_400_704)],
    ids=["SDXL", "Hunyuan-DiT"],
)
def test_network_has_the_published_keys_shapes_and_parameter_count(config, table, n_keys, n_parameters):
    with torch.device("meta"):
        model = NoiseAR(config)
    assert published_shapes(config) == table and len(table) == n_keys
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == table
    assert sum(p.numel() for p in model.parameters()) == n_parameters
    assert {name for name, _ in model.named_buffers()} == {"learnable_start_token_emb", "pos_encoding"}
    assert config.variant == ("SDXL" if config.text_dim == 2048 else "Hunyuan-DiT")


# Cached decoding == the published full-prefix algorithm -------------------------------------------


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
@pytest.mark.parametrize("masked", [False, True], ids=["all-tokens", "text-mask"])
def test_cached_sampler_equals_naive_on_tiny_configs(name, masked):
    config = TINY_CONFIGS[name]
    model, text, eps = random_model(config), random_text(config, 3, tokens=7), random_eps(config, 3)
    mask = text_mask_for(3, 7) if masked else None
    cached = model.sample(text, eps, temperature=0.8, text_mask=mask)
    naive = model.sample_naive(text, eps, temperature=0.8, text_mask=mask)
    assert cached.shape == (3, config.channels, config.latent_height, config.latent_width)
    torch.testing.assert_close(cached, naive, atol=1e-5, rtol=0)


def test_cached_sampler_equals_naive_on_published_size(published):
    text, eps = random_text(published.config), random_eps(published.config)
    cached = published.model.sample(text, eps)
    naive = published.model.sample_naive(text, eps)
    assert cached.shape == (1, 4, 128, 128) and cached.dtype == torch.float32
    torch.testing.assert_close(cached, naive, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
@pytest.mark.parametrize("masked", [False, True], ids=["all-tokens", "text-mask"])
def test_cached_decoding_equals_teacher_forcing_position_by_position(name, masked):
    """Fed in chunks of 1, 2 and the rest, the cached decoder predicts the last patch of each chunk as
    teacher forcing over the whole sequence does (fp64; a chunk of several rows runs the last layer for
    its last row alone)."""
    config = TINY_CONFIGS[name]
    model = model_from_state(config, as_double(random_state_dict(config, seed=5)))
    text, noise = random_text(config, 2, tokens=6).double(), random_eps(config, 2).double()
    mask = text_mask_for(2, 6) if masked else None
    prefix = patchify(noise, config.patch_size)[:, :-1]
    mu, logvar = model(text, prefix, mask)

    memory = model.encode_text(text)
    decoder = _CachedDecoder(
        model, model.text_keys_values(memory, CACHED_DECODING), model._text_attend(mask, memory), config.num_patches
    )
    start = model.learnable_start_token_emb.expand(2, 1, -1)
    x = torch.cat([start, model.latent_patch_encoder(prefix)], dim=1) + model.positions((config.grid_height, config.grid_width))
    ends = [1, 3, config.num_patches]  # every tiny config has more than 3 patches
    for begin, end in zip([0, *ends], ends):
        step_mu, step_logvar = decoder.step(x[:, begin:end])
        torch.testing.assert_close(step_mu, mu[:, end - 1 : end], atol=1e-12, rtol=0)
        torch.testing.assert_close(step_logvar, logvar[:, end - 1 : end], atol=1e-12, rtol=0)
    assert decoder.cache.position == config.num_patches


def multihead_attention_forward(
    model: NoiseAR, text: torch.Tensor, prefix: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing through the network's nn.MultiheadAttention modules themselves, as the published code runs them."""
    batch, length = prefix.shape[0], prefix.shape[1] + 1
    memory = model.encode_text(text)
    x = torch.cat([model.learnable_start_token_emb.expand(batch, 1, -1), model.latent_patch_encoder(prefix)], dim=1)
    x = x + model.positions((model.config.grid_height, model.config.grid_width))[:, :length]
    causal = torch.triu(torch.full((length, length), float("-inf")), 1)
    for k in range(model.config.n_layers):
        x = model.self_attn_norm[k](x)
        x = model.self_attn_layers[k](x, x, x, attn_mask=causal, need_weights=False)[0] + x
        x = model.cross_attn_norm[k](x)
        x = model.cross_attn_layers[k](x, memory, memory, key_padding_mask=~mask, need_weights=False)[0] + x
        x = model.ffn_norm[k](x)
        x = model.ffn_layers[k](x) + x
    return model.prediction_head_mu(x), model.prediction_head_logvar(x)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_teacher_forcing_trains_as_nn_multihead_attention_does(name):
    """Same values, same dropout (attention probabilities and feed-forward, drawn in the same order)
    and same gradients as the published layers; dropout is active in training only."""
    config = TINY_CONFIGS[name]
    model, text, noise = random_model(config), random_text(config, 3, tokens=6), random_eps(config, 3)
    prefix, mask = patchify(noise, config.patch_size)[:, :-1], text_mask_for(3, 6)
    outputs = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        for path, forward in (("ours", model), ("nn", lambda *args: multihead_attention_forward(model, *args))):
            model.zero_grad()
            torch.manual_seed(7)
            mu, logvar = forward(text, prefix, mask)
            (mu.square().sum() + logvar.sum()).backward()
            outputs[mode, path] = (mu, logvar, *(p.grad.clone() for p in model.parameters()))
        for ours, theirs in zip(outputs[mode, "ours"], outputs[mode, "nn"], strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(outputs["train", "ours"][0], outputs["eval", "ours"][0])


def test_one_text_embedding_serves_a_whole_batch():
    model, text, eps = random_model(TINY), random_text(TINY, 1, tokens=5), random_eps(TINY, 3)
    mask = torch.tensor([[True, True, True, False, False]])
    expected = model.sample(text.expand(3, -1, -1), eps, text_mask=mask.expand(3, -1))
    torch.testing.assert_close(model.sample(text, eps, text_mask=mask), expected, atol=1e-6, rtol=0)


# Against the independent reference ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
@pytest.mark.parametrize("masked", [False, True], ids=["all-tokens", "text-mask"])
def test_model_matches_reference_on_tiny_configs(name, masked):
    """In fp64 the network, both samplers and log_prob agree with the plain reference implementation."""
    config = TINY_CONFIGS[name]
    state = as_double(random_state_dict(config, seed=3))
    model = model_from_state(config, state)
    text, eps = random_text(config, 2, tokens=6).double(), random_eps(config, 2).double()
    mask = text_mask_for(2, 6) if masked else None
    prefix = patchify(eps, config.patch_size)[:, :-1]

    for ours, theirs in zip(model(text, prefix, mask), reference.forward(state, text, prefix, config.n_heads, mask)):
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    expected = reference.sample(state, text, eps, 0.7, config.n_heads, mask).float()
    torch.testing.assert_close(model.sample(text, eps, temperature=0.7, text_mask=mask), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.sample_naive(text, eps, temperature=0.7, text_mask=mask), expected, atol=1e-6, rtol=0)
    expected_log_prob = reference.patch_log_probs(state, text, eps, config.n_heads, mask).sum(dim=1)
    torch.testing.assert_close(model.log_prob(text, eps, mask), expected_log_prob.float(), atol=1e-4, rtol=1e-6)


def test_published_size_sample_satisfies_the_reference_equations(published):
    """Every patch j of our sample is mu_j + 0.5 * std_j * eps_j with mu, std from the fp64 reference
    network fed our patches < j. This pins the whole sample, as the published sampler's is unique."""
    config, text, eps = published.config, random_text(published.config), random_eps(published.config)
    noise = published.model.sample(text, eps)
    state = as_double(published.state)
    tokens, eps_tokens = reference.to_tokens(noise.double(), 32), reference.to_tokens(eps.double(), 32)
    mu, logvar = reference.forward(state, text.double(), tokens[:, :-1])
    torch.testing.assert_close(tokens, mu + 0.5 * reference.std_of(logvar) * eps_tokens, atol=1e-5, rtol=0)
    assert config.num_patches == tokens.shape[1] == 16


def test_published_size_log_prob_matches_reference(published):
    text, noise = random_text(published.config, 2), random_eps(published.config, 2, seed=5)
    expected = reference.patch_log_probs(as_double(published.state), text.double(), noise.double()).sum(dim=1)
    torch.testing.assert_close(published.model.log_prob(text, noise).double(), expected, atol=0.05, rtol=1e-6)


# Log-probability and training ------------------------------------------------------------------------


def test_log_prob_is_the_sum_of_per_patch_gaussian_densities():
    """Changing only the last patch changes log_prob by exactly that patch's density difference."""
    model, text = random_model(TINY), random_text(TINY, 1, tokens=4)
    noise = random_eps(TINY, 1, seed=8)
    changed = noise.clone()
    changed[:, :, -2:, -2:] += 1.0  # the last 2x2 patch in raster order
    state = as_double(random_state_dict(TINY))
    before = reference.patch_log_probs(state, text.double(), noise.double())
    after = reference.patch_log_probs(state, text.double(), changed.double())
    assert torch.equal(before[:, :-1], after[:, :-1])
    delta = model.log_prob(text, changed) - model.log_prob(text, noise)
    torch.testing.assert_close(delta.double(), after[:, -1] - before[:, -1], atol=1e-4, rtol=0)


def test_gradient_of_log_prob_reaches_every_parameter_and_a_step_improves_it():
    model = random_model(TINY_CONFIGS["deep-nonsquare-adapter"]).train()
    config = model.config
    text, noise = random_text(config, 4, tokens=5), random_eps(config, 4, seed=9)
    model.log_prob(text, noise).mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert all(not buffer.requires_grad for buffer in model.buffers())

    model.eval()
    before = model.log_prob(text, noise).mean()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter += 1e-4 * parameter.grad
    assert model.log_prob(text, noise).mean() > before


# Determinism ----------------------------------------------------------------------------------------


def test_repeated_calls_are_identical():
    model, text = random_model(TINY), random_text(TINY, 2)
    assert torch.equal(model.sample(text, generator=[3, 4]), model.sample(text, generator=[3, 4]))
    assert torch.equal(model.sample(text, generator=11), model.sample(text, generator=11))
    eps = random_eps(TINY, 2)
    assert torch.equal(model.sample(text, eps), model.sample(text, eps))
    assert not torch.equal(model.sample(text, generator=[3, 4]), model.sample(text, generator=[3, 5]))


def test_item_of_a_batch_equals_it_sampled_alone_with_eps_and_with_seed_lists():
    config = TINY_CONFIGS["deep-nonsquare-adapter"]
    model, text, eps = random_model(config), random_text(config, 3), random_eps(config, 3)
    batch_eps, batch_seeds = model.sample(text, eps), model.sample(text, generator=[10, 20, 30])
    # same draws; the arithmetic may round differently at another batch size (BLAS blocking), hence 1e-6
    for i, seed in enumerate([10, 20, 30]):
        alone_eps = model.sample(text[i : i + 1], eps[i : i + 1])
        alone_seed = model.sample(text[i : i + 1], generator=[seed])
        torch.testing.assert_close(batch_eps[i : i + 1], alone_eps, atol=1e-6, rtol=0)
        torch.testing.assert_close(batch_seeds[i : i + 1], alone_seed, atol=1e-6, rtol=0)
        assert torch.equal(alone_seed, model.sample(text[i : i + 1], generator=torch.Generator().manual_seed(seed)))


def test_int_seed_draws_item_i_as_the_ith_draw_of_one_cpu_generator():
    """standard_normal's documented int-seed rule (ComfyUI's batch_index convention)."""
    shape = (3, TINY.channels, TINY.latent_height, TINY.latent_width)
    generator = torch.Generator().manual_seed(42)
    draws = [torch.randn((1, *shape[1:]), generator=generator) for _ in range(3)]
    eps = standard_normal(shape, 42)
    assert eps.dtype == torch.float32 and eps.device.type == "cpu"
    assert torch.equal(eps, torch.cat(draws))
    assert torch.equal(standard_normal((2, *shape[1:]), 42), eps[:2])
    model, text = random_model(TINY), random_text(TINY, 3)
    assert torch.equal(model.sample(text, generator=42), model.sample(text, eps))
    torch.testing.assert_close(model.sample(text[2:], eps[2:]), model.sample(text, generator=42)[2:], atol=1e-6, rtol=0)


def test_temperature_scales_the_deviation_from_mu():
    """Patch 0 (mu, std from the text alone) moves exactly linearly in T; every later patch deviates
    from the mu its own prefix gives by exactly T * std * eps."""
    model, text, eps = random_model(TINY), random_text(TINY, 2), random_eps(TINY, 2)
    tokens = {t: patchify(model.sample(text, eps, temperature=t), 2) for t in (0.0, 0.5, 1.0)}
    torch.testing.assert_close(
        tokens[1.0][:, 0] - tokens[0.0][:, 0], 2 * (tokens[0.5][:, 0] - tokens[0.0][:, 0]), atol=1e-6, rtol=0
    )
    eps_tokens = patchify(eps, 2)
    for t, sampled in tokens.items():
        mu, logvar = model(text, sampled[:, :-1])
        deviation = t * torch.exp(0.5 * logvar.clamp(-20, 10)) * eps_tokens
        torch.testing.assert_close(sampled - mu.detach(), deviation.detach(), atol=1e-6, rtol=0)
    assert not torch.allclose(tokens[0.5], tokens[1.0])


@pytest.mark.parametrize("sampler", ["sample", "sample_naive"])
def test_sampling_runs_in_eval_mode_and_restores_training_mode(sampler):
    model, text, eps = random_model(TINY), random_text(TINY, 2), random_eps(TINY, 2)
    expected = getattr(model, sampler)(text, eps)
    model.train()
    prefix = patchify(eps, 2)[:, :-1]
    torch.manual_seed(0)
    assert not torch.equal(model(text, prefix)[0], model(text, prefix)[0])  # dropout is active in training
    assert torch.equal(getattr(model, sampler)(text, eps), expected)
    assert all(module.training for module in model.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_sample_equals_cpu_sample():
    model, text = random_model(TINY), random_text(TINY, 2)
    expected = model.sample(text, generator=[1, 2])
    on_gpu = model.to("cuda").sample(text.cuda(), generator=[1, 2])
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.sample_naive(text.cuda(), generator=[1, 2]), on_gpu, atol=1e-4, rtol=0)


def test_callback_reports_progress_and_may_interrupt():
    model, text = random_model(TINY), random_text(TINY)
    seen = []
    model.sample(text, generator=[0], callback=lambda done, total: seen.append((done, total)))
    assert seen == [(j, 9) for j in range(1, 10)]

    def interrupt(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.sample(text, generator=[0], callback=interrupt)


# Refused inputs -------------------------------------------------------------------------------------


def test_wrong_text_width_names_the_expected_width_and_variant(published):
    wrong_width = 1024 if published.variant == "SDXL" else 2048
    with pytest.raises(
        NoiseARInputError,
        match=rf"{published.variant} prior expects \[batch, tokens, "
        rf"{published.config.text_dim}\]",
    ):
        published.model.sample(torch.zeros(1, 77, wrong_width), generator=[0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.sample(torch.zeros(1, 4, 16), torch.zeros(1, 4, 6, 4)), r"eps has shape \[1, 4, 6, 4\].*\[batch, 3, H, W\]"),
        (lambda m: m.sample(torch.zeros(1, 4, 16), torch.zeros(3, 6, 6)), r"eps has shape \[3, 6, 6\]"),
        (lambda m: m.sample(torch.zeros(1, 4, 16), torch.zeros(1, 3, 0, 6)), r"eps has shape \[1, 3, 0, 6\].*H, W >= 1"),
        (lambda m: m.sample(torch.zeros(2, 4, 16), torch.zeros(3, 3, 6, 6)), r"text batch 2 does not match noise batch 3"),
        (lambda m: m.sample(torch.zeros(4, 16), torch.zeros(4, 3, 6, 6)), r"text embedding has shape \[4, 16\]"),
        (lambda m: m.sample(torch.zeros(2, 4, 16), generator=[0]), r"got 1 seeds/generators for a batch of 2"),
        (
            lambda m: m.sample(torch.zeros(1, 4, 16), generator=[0], text_mask=torch.ones(1, 5)),
            r"text_mask has shape \[1, 5\]; expected \[1, 4\]",
        ),
        (lambda m: m.log_prob(torch.zeros(1, 4, 16), torch.zeros(1, 3, 4, 4)), r"noise has shape \[1, 3, 4, 4\]"),
    ],
    ids=["eps-channels", "eps-ndim", "eps-empty", "text-batch", "text-ndim", "seed-count", "mask-shape", "log-prob-noise"],
)
def test_bad_inputs_are_refused_with_what_was_expected(call, message):
    with pytest.raises(NoiseARInputError, match=message):
        call(random_model(TINY))


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        NoiseARConfig(),
        NoiseARConfig(text_dim=1024),
        NoiseARConfig(
            patch_size=2,
            channels=3,
            latent_height=4,
            latent_width=8,
            d_model=24,
            d_ff=40,
            n_layers=3,
            n_heads=2,
            text_dim=12,
            positions="2d",
        ),
    ],
    ids=["tiny", "sdxl", "hunyuan", "own-2d"],
)
def test_state_shapes_are_the_networks_without_building_it(config):
    """What checkpoints are checked against before loading equals the state dict the network has."""
    with torch.device("meta"):
        built = {key: tuple(value.shape) for key, value in NoiseAR(config).state_dict().items()}
    assert config.state_shapes() == built
    assert config.num_values == sum(math.prod(shape) for shape in built.values())
