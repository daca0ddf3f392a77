"""The ComfyUI nodes without ComfyUI: host functions run against tests/fake_comfy.py.

A real tiny prior checks the numbers (against noisear's own sampler fed ComfyUI's eps); a recording
stand-in with the published SDXL / Hunyuan-DiT config checks what the nodes hand to the prior.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import math
import os
import pkgutil
import subprocess
import sys
import weakref
from pathlib import Path

import fake_comfy
import pytest
import torch
from builders import HUNYUAN_DIT, SDXL, random_model

import nodes
from nodes import host
from nodes import prior as prior_module
from nodes.definitions import (
    NODE_CLASS_MAPPINGS,
    NoiseARBlendNode,
    NoiseARLatentNode,
    NoiseARLoader,
    NoiseARNoiseNode,
    NoiseARPreviewNode,
)
from nodes.preview import colour_matrix, noise_to_image
from nodes.prior import NoiseARPrior
from nodes.widgets import RETIRED_SIZE_MODE, SIZE_MODES, NoiseARNodeError, size_text
from noisear import NoiseARConfig, save
from noisear.cost import estimate
from noisear.families import FAMILIES
from noisear.io import NoiseARCheckpointError, file_identity

REPO = Path(__file__).resolve().parents[1]
# 4 channels like SDXL latents, 8x8 latent in 4x4 patches, 2x2 grid, 24-d text
SMALL = NoiseARConfig(patch_size=4, channels=4, latent_height=8, latent_width=8, d_model=16, d_ff=24, text_dim=24)


@pytest.fixture(autouse=True)
def host_fakes(monkeypatch, tmp_path):
    return fake_comfy.install(monkeypatch, tmp_path)


@pytest.fixture
def small_ckpt(host_fakes, tmp_path):
    """A random SMALL prior saved as models/noisear/small.safetensors and the folder registered."""
    host.register_model_folder()
    folder = Path(host_fakes.folder_paths.models_dir) / "noisear"
    folder.mkdir(parents=True)
    save(random_model(SMALL, seed=3), folder / "small.safetensors")
    return "small.safetensors"


def load(name="small.safetensors", device="auto", dtype="fp32") -> NoiseARPrior:
    return NoiseARLoader().load(name, device, dtype)["result"][0]


def conditioning(tokens=77, width=24, batch=1, seed=5, **extras):
    cond = torch.randn(batch, tokens, width, generator=torch.Generator().manual_seed(seed))
    return [[cond, dict(extras)]]


def empty_latent(batch=1, channels=4, height=8, width=8, **extras):
    return {"samples": torch.zeros(batch, channels, height, width), **extras}


class RecordingModel:
    """Stands in for a NoiseAR network with ``config``: records calls, returns temperature * eps + offset."""

    def __init__(self, config: NoiseARConfig, offset: float = 1.0) -> None:
        self.config, self.offset, self.calls, self.moves = config, offset, [], []

    def to(self, device):
        self.moves.append(torch.device(device).type)
        return self

    def draw_cost(self, size, text_tokens):
        return estimate(self.config, tuple(size), text_tokens)

    def sample(self, text, eps, *, temperature, text_mask, callback):
        self.calls.append({"text": text, "eps": eps, "mask": text_mask})
        steps = self.config.plan(*eps.shape[2:]).patches
        for done in range(1, steps + 1):
            callback(done, steps)
        return temperature * eps + self.offset


def recording_prior(config: NoiseARConfig, device="auto") -> NoiseARPrior:
    return NoiseARPrior(RecordingModel(config), "stand-in", device, "fp32")


def noise_for(prior, latent, cond=None, seed=11, temperature=0.5, size_mode=SIZE_MODES[0], upstream=None):
    cond = cond if cond is not None else conditioning(width=prior.config.text_dim)
    noise = NoiseARNoiseNode().make(prior, cond, seed, temperature, size_mode, upstream)[0]
    return noise.generate_noise(latent)


# Loading ----------------------------------------------------------------------------------------------
def test_model_folder_is_merged_into_an_entry_from_extra_model_paths(host_fakes):
    host_fakes.folder_paths.folder_names_and_paths["noisear"] = (["/extra/noisear"], set())
    host.register_model_folder()
    paths, extensions = host_fakes.folder_paths.folder_names_and_paths["noisear"]
    assert paths == ["/extra/noisear", os.path.join(host_fakes.folder_paths.models_dir, "noisear")]
    assert {".safetensors", ".pth"} <= extensions


def test_loader_lists_the_folder_and_shows_the_variant(small_ckpt):
    assert NoiseARLoader.INPUT_TYPES()["required"]["ckpt_name"][0] == ["small.safetensors"]
    result = NoiseARLoader().load(small_ckpt, "auto", "fp32")
    prior, info = result["result"]
    assert prior.variant == "own" and "own prior" in info and result["ui"]["text"] == (info,)
    assert next(prior.model.parameters()).device.type == "cpu"


def test_loader_caches_by_path_and_mtime(small_ckpt, host_fakes):
    first, again = load(), load()
    assert again.model is first.model
    path = host.checkpoint_path(small_ckpt)
    os.utime(path, (os.path.getmtime(path) + 10, os.path.getmtime(path) + 10))
    assert load().model is not first.model
    assert NoiseARLoader.IS_CHANGED(small_ckpt, "auto", "fp32") != NoiseARLoader.IS_CHANGED("gone", "auto", "fp32")


def replace_keeping_mtime(path: Path, content: bytes, how: str) -> None:
    """Put ``content`` at ``path`` with the old modification time, as cp -p, rsync -a or an archive does."""
    old = os.stat(path)
    if how == "rename":  # rsync -a, tar, a download: a new file renamed over the old one
        temporary = path.with_name(".incoming")
        temporary.write_bytes(content)
        os.utime(temporary, ns=(old.st_atime_ns, old.st_mtime_ns))
        os.replace(temporary, path)
    else:  # cp -p onto the file, or a rewrite in place: same inode
        with open(path, "r+b") as handle:
            handle.write(content)
            handle.truncate()
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == old.st_mtime_ns


@pytest.mark.parametrize("how", ["rename", "in place"])
def test_a_checkpoint_replaced_with_the_same_mtime_and_size_is_read_again(small_ckpt, tmp_path, how):
    """ComfyUI reuses the Loader's output while IS_CHANGED says the same: it must change with the content."""
    first, before = load(), NoiseARLoader.IS_CHANGED(small_ckpt, "auto", "fp32")
    path = Path(host.checkpoint_path(small_ckpt))
    retrained = random_model(SMALL, seed=4)
    save(retrained, tmp_path / "retrained.safetensors")
    content = (tmp_path / "retrained.safetensors").read_bytes()
    assert len(content) == path.stat().st_size  # same size, so only the content tells them apart
    replace_keeping_mtime(path, content, how)
    assert NoiseARLoader.IS_CHANGED(small_ckpt, "auto", "fp32") != before
    second = load()
    assert second.model is not first.model
    assert all(torch.equal(a, b) for a, b in zip(second.model.state_dict().values(), retrained.state_dict().values()))
    assert NoiseARLoader.IS_CHANGED(small_ckpt, "auto", "fp32") == NoiseARLoader.IS_CHANGED(small_ckpt, "auto", "fp32")


def test_file_identity_names_the_real_file_and_samples_its_first_and_last_64_kib(tmp_path):
    path, link = tmp_path / "weights.bin", tmp_path / "link.bin"
    path.write_bytes(bytes(300 * 1024))
    link.symlink_to(path)
    identity = file_identity(path)
    assert file_identity(link) == identity == file_identity(path) and identity.path == str(path.resolve())
    assert (identity.size, identity.inode) == (300 * 1024, os.stat(path).st_ino)
    samples = {}
    for where in (0, 150 * 1024, 300 * 1024 - 1):  # a change at the start, in the middle, at the end
        content = bytearray(300 * 1024)
        content[where] = 1
        path.write_bytes(bytes(content))
        samples[where] = file_identity(path)
        assert samples[where] != identity  # ctime moves with every write
    assert samples[0].content != identity.content and samples[300 * 1024 - 1].content != identity.content
    assert samples[150 * 1024].content == identity.content  # the middle is ctime's job (see file_identity)


def test_file_identity_refuses_what_is_not_a_regular_file_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.safetensors")
    for name in ("pipe.safetensors", "."):
        with pytest.raises(NoiseARCheckpointError, match="not a regular file"):
            file_identity(tmp_path / name)


def test_the_loader_cache_holds_only_what_comfyui_holds(small_ckpt, host_fakes):
    """Priors are cached weakly: dropping every node output (ComfyUI's "free node cache") frees the weights."""
    first = load()
    alive = weakref.ref(first.model)
    path = host.checkpoint_path(small_ckpt)
    os.utime(path, (os.path.getmtime(path) + 10, os.path.getmtime(path) + 10))
    second = load()
    assert second.model is not first.model and load().model is second.model
    del first
    gc.collect()
    assert alive() is None and list(prior_module._cache.values()) == [second.model]
    del second
    gc.collect()
    assert len(prior_module._cache) == 0


def test_the_missing_checkpoint_message_lists_a_bounded_number_of_files(host_fakes):
    host.register_model_folder()
    folder = Path(host_fakes.folder_paths.models_dir) / "noisear"
    folder.mkdir(parents=True)
    for i in range(500):
        (folder / f"prior_{i:03d}.safetensors").touch()
    with pytest.raises(NoiseARNodeError, match=r"found: prior_000\.safetensors, .* \.\.\. and 495 more\)") as caught:
        load("x" * 5000 + ".safetensors")
    assert len(str(caught.value)) < 2000


def guidance_for(folder: str) -> list[str]:
    """What a user with no weights must be told: the folder, which checkpoint fits which model, the command."""
    return [
        folder,
        "sdxl_and_dreamshaper for SDXL base 1.0 and DreamShaper-XL",
        "sdxl_and_dreamshaper_dpo for SDXL",
        "dit for Hunyuan-DiT v1.2",
        "dit_dpo for Hunyuan-DiT v1.2",
        f'-m noisear convert path/to/sdxl_and_dreamshaper/model.pth "{folder}/sdxl_and_dreamshaper.safetensors"',
        f'cd "{REPO}"',
    ]


def test_an_empty_model_folder_tells_where_files_go_and_how_to_get_them(host_fakes):
    host.register_model_folder()  # models/noisear does not even exist yet
    folder = os.path.join(host_fakes.folder_paths.models_dir, "noisear")
    assert NoiseARLoader.INPUT_TYPES()["required"]["ckpt_name"][0] == []
    message = NoiseARLoader.VALIDATE_INPUTS("sdxl_and_dreamshaper.safetensors")
    assert "there is no checkpoint there" in message
    for part in guidance_for(folder):
        assert part in message
    with pytest.raises(NoiseARNodeError) as error:
        load("sdxl_and_dreamshaper.safetensors")
    assert all(part in str(error.value) for part in guidance_for(folder))


def test_a_file_not_in_the_list_is_refused_like_comfyuis_list_check_with_the_files_found(small_ckpt, host_fakes):
    host_fakes.folder_paths.folder_names_and_paths["noisear"][0].insert(0, "/extra/noisear")
    message = NoiseARLoader.VALIDATE_INPUTS("dit.safetensors")
    assert "go in /extra/noisear or " in message and "'dit.safetensors' is not there (found: small.safetensors)" in message
    assert all(part in message for part in guidance_for("/extra/noisear"))
    assert NoiseARLoader.VALIDATE_INPUTS(small_ckpt) is True


def inputs_given_the_validation_message(node: type) -> list[str]:
    """The inputs ComfyUI attaches a VALIDATE_INPUTS message to, one copy each (execution.validate_inputs): the
    node's inputs among the function's arguments, or every input when it takes **kwargs."""
    spec = inspect.getfullargspec(node.VALIDATE_INPUTS)
    inputs = {**node.INPUT_TYPES()["required"], **node.INPUT_TYPES().get("optional", {})}
    return list(inputs) if spec.varkw else [name for name in spec.args if name in inputs]


def test_the_missing_checkpoint_message_appears_once_in_comfyuis_error_dialog(host_fakes):
    host.register_model_folder()
    assert inputs_given_the_validation_message(NoiseARLoader) == ["ckpt_name"]


def test_loader_refuses_impossible_device_and_dtype(small_ckpt):
    """device and dtype are checked when the Loader runs (before any file is read), with ComfyUI's own list check
    before that: a VALIDATE_INPUTS that took them would repeat the missing-checkpoint message three times."""
    with pytest.raises(NoiseARNodeError, match="ComfyUI runs on the CPU"):
        load(device="gpu")
    with pytest.raises(NoiseARNodeError, match="fp16 runs on a GPU only"):
        load(dtype="fp16")


def test_prior_visits_the_gpu_only_while_drawing(host_fakes):
    class OnAccelerator(RecordingModel):  # "meta" plays the GPU: tensors move there without CUDA
        def sample(self, text, eps, **kwargs):
            assert text.device.type == eps.device.type == "meta"
            return torch.zeros(eps.shape)

    host_fakes.comfy.model_management.device = torch.device("meta")
    prior = NoiseARPrior(OnAccelerator(SMALL), "stand-in", "auto", "fp32")
    noise_for(prior, empty_latent())
    assert prior.model.moves == ["meta", "cpu"]
    assert host_fakes.comfy.model_management.cache_emptied == 1


# NoiseAR Noise ------------------------------------------------------------------------------------------
def test_noise_is_the_prior_sample_of_comfyuis_eps_for_the_seed(small_ckpt):
    prior, latent, cond = load(), empty_latent(batch=2), conditioning()
    noise = noise_for(prior, latent, cond, seed=11, temperature=0.7)
    eps = fake_comfy.prepare_noise(latent["samples"], 11)
    for i in range(2):
        expected = prior.model.sample(cond[0][0], eps[i : i + 1], temperature=0.7)
        assert torch.equal(noise[i : i + 1], expected)
    assert noise.shape == latent["samples"].shape and noise.dtype == torch.float32


def test_batch_index_reproduces_the_item_of_the_full_batch(small_ckpt):
    prior = load()
    full = noise_for(prior, empty_latent(batch=3))
    assert torch.equal(noise_for(prior, empty_latent(batch=1, batch_index=[2])), full[2:3])


def test_upstream_noise_gives_eps_and_its_seed():
    class Upstream:
        seed = 1234

        def generate_noise(self, latent):
            return torch.full(latent["samples"].shape, 2.0)

    prior = recording_prior(SMALL)
    node_noise = NoiseARNoiseNode().make(prior, conditioning(), 0, 0.5, SIZE_MODES[0], Upstream())[0]
    assert node_noise.seed == 1234
    assert torch.equal(node_noise.generate_noise(empty_latent()), torch.full((1, 4, 8, 8), 0.5 * 2.0 + 1.0))


def test_one_draw_is_shared_by_repeated_calls_for_the_same_latent():
    prior = recording_prior(SMALL)
    node_noise = NoiseARNoiseNode().make(prior, conditioning(), 0, 0.5, SIZE_MODES[0])[0]
    first = node_noise.generate_noise(empty_latent())
    assert torch.equal(node_noise.generate_noise(empty_latent()), first) and len(prior.model.calls) == 1


def test_progress_counts_patches_times_batch_and_interrupt_stops_the_draw(host_fakes):
    prior = recording_prior(SMALL)
    noise_for(prior, empty_latent(batch=3))
    bar = host_fakes.progress_bars[-1]
    assert bar.total == 3 * SMALL.num_patches and bar.updates[-1] == bar.total
    host_fakes.comfy.model_management.interrupted = True
    with pytest.raises(fake_comfy.InterruptProcessingException):
        noise_for(recording_prior(SMALL), empty_latent())


@pytest.mark.parametrize("config", [SDXL, HUNYUAN_DIT], ids=["SDXL", "Hunyuan-DiT"])
def test_published_priors_read_the_first_77_tokens_and_no_mask(config):
    prior = recording_prior(config)
    cond = conditioning(tokens=154, width=config.text_dim, attention_mask=torch.ones(1, 154))
    noise_for(prior, empty_latent(height=128, width=128), cond)
    call = prior.model.calls[0]
    assert torch.equal(call["text"], cond[0][0][:, :77]) and call["mask"] is None


def test_own_priors_read_all_tokens_and_the_mask_and_one_conditioning_serves_the_batch():
    prior = recording_prior(SMALL)
    mask = torch.tensor([[1] * 80 + [0] * 20])
    cond = conditioning(tokens=100, attention_mask=mask)
    noise_for(prior, empty_latent(batch=2), cond)
    assert len(prior.model.calls) == 2
    for call in prior.model.calls:
        assert torch.equal(call["text"], cond[0][0]) and torch.equal(call["mask"], mask.bool())


@pytest.mark.parametrize(
    "config, width, needs",
    [(SDXL, 768, "SDXL / DreamShaper-XL"), (HUNYUAN_DIT, 2048, "Hunyuan-DiT")],
    ids=["SD1.5-into-SDXL", "SDXL-into-Hunyuan"],
)
def test_wrong_conditioning_width_names_the_model_the_prior_needs(config, width, needs):
    with pytest.raises(NoiseARNodeError, match=f"{width}-d.*{needs}"):
        NoiseARNoiseNode().make(recording_prior(config), conditioning(width=width), 0, 0.5, SIZE_MODES[0])


def test_any_size_is_the_default_and_draws_the_prior_sample_of_the_whole_latent(small_ckpt):
    """A 5 x 10-cell latent (2 x 3 patches of 4, the last row and column cropped) is the library's sample."""
    prior, latent, cond = load(), empty_latent(batch=2, height=5, width=10), conditioning()
    assert NoiseARNoiseNode.INPUT_TYPES()["required"]["size_mode"][1]["default"] == "any size"
    node_noise = NoiseARNoiseNode().make(prior, cond, 11, 0.7, "any size")[0]
    noise = node_noise.generate_noise(latent)
    eps = fake_comfy.prepare_noise(latent["samples"], 11)
    for i in range(2):
        assert torch.equal(noise[i : i + 1], prior.model.sample(cond[0][0], eps[i : i + 1], temperature=0.7))
    assert node_noise.info == (
        "NoiseAR decoding: sliding window over 2 x 3 patches for 80 x 40 px (W x H), latent 5 x 10 cells (H x W)"
    )
    assert noise_for(prior, empty_latent()) is not None


@pytest.mark.parametrize(
    "config, shape, decoding",
    [
        (SDXL, (128, 128), "native"),
        (SDXL, (152, 104), "sliding window over 5 x 4 patches"),
        (HUNYUAN_DIT, (96, 160), "sliding window over 3 x 5 patches"),
        (
            NoiseARConfig(
                patch_size=4, channels=4, latent_height=8, latent_width=8, d_model=16, d_ff=24, text_dim=24, positions="2d"
            ),
            (12, 6),
            "2-D prior",
        ),
    ],
    ids=["native", "sdxl-832x1216", "hunyuan-1280x768", "2d"],
)
def test_info_says_which_decoding_was_used(config, shape, decoding):
    prior = recording_prior(config)
    node_noise = NoiseARNoiseNode().make(prior, conditioning(width=config.text_dim), 0, 0.5, "any size")[0]
    node_noise.generate_noise(empty_latent(height=shape[0], width=shape[1]))
    assert node_noise.info == f"NoiseAR decoding: {decoding} for {size_text(shape)}"
    assert prior.model.calls[0]["eps"].shape == (1, 4, *shape)


def test_size_text_labels_pixels_and_latent_cells_in_the_familys_pixels_and_frames():
    assert size_text((152, 104)) == "832 x 1216 px (W x H), latent 152 x 104 cells (H x W)"
    assert size_text((32, 32), FAMILIES["hunyuan-image-2.1"]) == "1024 x 1024 px (W x H), latent 32 x 32 cells (H x W)"
    assert size_text((64, 48), FAMILIES["chroma-radiance"]) == "48 x 64 px (W x H), latent 64 x 48 cells (H x W)"
    assert size_text((21, 60, 104), FAMILIES["wan"]) == (
        "832 x 480 px x 81 frames (W x H x frames), latent 21 x 60 x 104 cells (T x H x W)"
    )


def test_native_only_refuses_other_sizes_naming_both_sizes_and_the_way_out():
    with pytest.raises(
        NoiseARNodeError,
        match=r"NoiseAR Noise: .*native to 1024 x 1024 px \(W x H\), latent 128 x 128 "
        r"cells \(H x W\); this latent is 832 x 1216 px \(W x H\), latent 152 x 104 "
        r"cells \(H x W\).*'any size'",
    ):
        noise_for(recording_prior(SDXL), empty_latent(height=152, width=104), conditioning(width=2048), size_mode="native only")
    assert noise_for(
        recording_prior(SDXL), empty_latent(height=128, width=128), conditioning(width=2048), size_mode="native only"
    ).shape == (1, 4, 128, 128)


def test_the_retired_centre_mode_runs_as_any_size_with_a_note(caplog):
    assert NoiseARNoiseNode.VALIDATE_INPUTS(RETIRED_SIZE_MODE) is True
    assert "size_mode must be one of 'any size', 'native only'" in NoiseARNoiseNode.VALIDATE_INPUTS("centre")
    assert NoiseARLatentNode.VALIDATE_INPUTS("any size") is True
    prior = recording_prior(SDXL)
    node_noise = NoiseARNoiseNode().make(prior, conditioning(width=2048), 11, 0.5, RETIRED_SIZE_MODE)[0]
    latent = empty_latent(height=96, width=160)
    noise = node_noise.generate_noise(latent)
    assert torch.equal(noise, 0.5 * fake_comfy.prepare_noise(latent["samples"], 11) + 1.0)  # all of it the prior's
    assert "was retired" in node_noise.info and "runs as 'any size'" in node_noise.info and "retired" in caplog.text
    with pytest.raises(NoiseARNodeError, match="size_mode must be one of"):
        NoiseARNoiseNode().make(prior, conditioning(width=2048), 11, 0.5, "centre")


def test_channel_mismatch_is_refused_naming_the_node_the_latent_and_the_prior():
    with pytest.raises(
        NoiseARNodeError,
        match=r"NoiseAR Noise: the latent \[1, 16, 8, 8\] has 16 channels \(SD3 / SD3.5, Flux.1 dev / schnell, .*latents\), "
        r"but the NoiseAR prior 'stand-in' \(own prior: 4-channel latents, 24-wide text\) models 4-channel latents",
    ):
        noise_for(recording_prior(SMALL), empty_latent(channels=16))


HOSTILE_NOISE_INPUTS = {  # what reaches NoiseAR Noise -> (conditioning, latent, the message expected)
    "two prompts for three images": (
        conditioning(batch=2),
        empty_latent(batch=3),
        r"NoiseAR Noise: the positive conditioning holds 2 embeddings \(batch 2\) for a latent batch of 3 images; "
        r"give one conditioning \(batch 1, used for every image\) or one per image \(batch 3\)",
    ),
    "three prompts for two images": (
        conditioning(batch=3),
        empty_latent(batch=2),
        r"holds 3 embeddings \(batch 3\) for a latent batch of 2 images; .* \(batch 1, .*\(batch 2\)",
    ),
    "integer conditioning": (
        [[torch.ones(1, 77, 24, dtype=torch.int64), {}]],
        empty_latent(),
        r"the positive conditioning is a torch.int64 tensor, not floating point",
    ),
    "no tokens": (conditioning(tokens=0), empty_latent(), r"the positive conditioning has no tokens"),
    "every token masked": (
        conditioning(tokens=5, attention_mask=torch.zeros(1, 5)),
        empty_latent(),
        r"attention_mask marks no token of the prompt as real",
    ),
    "batch 0": (conditioning(), empty_latent(batch=0), r"NoiseAR Noise: the latent holds no image \(batch 0"),
    "height 0": (conditioning(), empty_latent(height=0), r"NoiseAR Noise: the latent has shape \[1, 4, 0, 8\]"),
    "no samples": (conditioning(), {}, r"NoiseAR Noise: latent_image is not a LATENT \(a dict with a 'samples' tensor\)"),
    "samples not a tensor": (conditioning(), {"samples": [[0.0]]}, r"latent_image is not a LATENT .* got list"),
}


@pytest.mark.parametrize("case", list(HOSTILE_NOISE_INPUTS))
def test_hostile_noise_inputs_are_refused_naming_what_was_expected(case):
    cond, latent, message = HOSTILE_NOISE_INPUTS[case]
    prior = NoiseARPrior(random_model(SMALL, seed=3), "small", "auto", "fp32")  # the real network
    with pytest.raises(NoiseARNodeError, match=message):
        noise_for(prior, latent, cond)


def test_one_embedding_per_image_is_read_by_its_image():
    prior = recording_prior(SMALL)
    cond = conditioning(batch=2)
    noise_for(prior, empty_latent(batch=2), cond)
    assert [torch.equal(call["text"], cond[0][0][i : i + 1]) for i, call in enumerate(prior.model.calls)] == [True, True]


# NoiseAR Latent -------------------------------------------------------------------------------------------
def latent_node(prior, model, latent, seed=11, **kwargs):
    return NoiseARLatentNode().make(
        model, prior, conditioning(width=prior.config.text_dim), seed, 0.5, SIZE_MODES[0], latent, **kwargs
    )["result"]


@pytest.mark.parametrize("filled", [False, True], ids=["empty-latent", "non-zero-latent"])
def test_latent_path_starts_where_the_noise_path_starts(small_ckpt, filled):
    prior, model = load(), fake_comfy.Model()
    latent = empty_latent(batch=2, batch_index=[4, 7])
    if filled:
        latent["samples"] = torch.randn(2, 4, 8, 8)
    start_latent, info = latent_node(prior, model, latent)
    noise = noise_for(prior, latent)
    sampling, fmt = model.sampling, model.latent_format
    sigma = float(sampling.sigma_max)
    noise_path = sampling.noise_scaling(sigma, noise, fmt.process_in(latent["samples"]) if filled else latent["samples"])
    ksampler_path = fmt.process_in(start_latent["samples"])  # add_noise disable: process_in(LATENT) is x
    torch.testing.assert_close(ksampler_path, noise_path, rtol=1e-5, atol=1e-5)
    if not filled:
        torch.testing.assert_close(start_latent["samples"], noise * math.sqrt(1 + 14.6146**2) / 0.13025)
    assert start_latent["batch_index"] == [4, 7] and "channel 3" in info


def test_latent_path_refuses_a_latent_with_nan_or_inf(small_ckpt):
    for bad in (float("nan"), float("inf")):
        latent = empty_latent()
        latent["samples"][0, 0, 0, 0] = bad
        with pytest.raises(NoiseARNodeError, match="NoiseAR Latent: the latent_image holds NaN or infinite values"):
            latent_node(load(), fake_comfy.Model(), latent)


def test_latent_path_refuses_flow_models_and_masks(small_ckpt):
    with pytest.raises(NoiseARNodeError, match="flow model.*NoiseAR Noise"):
        latent_node(load(), fake_comfy.Model(sampling=fake_comfy.CONST()), empty_latent())
    with pytest.raises(NoiseARNodeError, match="noise_mask"):
        latent_node(load(), fake_comfy.Model(), empty_latent(noise_mask=torch.ones(1, 8, 8)))


def test_latent_node_raises_latent_errors_on_itself_and_shows_the_decoding(small_ckpt):
    with pytest.raises(NoiseARNodeError, match="NoiseAR Latent: the latent .* has 16 channels"):
        latent_node(load(), fake_comfy.Model(), empty_latent(channels=16))
    _, info = latent_node(load(), fake_comfy.Model(), empty_latent(height=12, width=4))
    assert info.startswith("NoiseAR decoding: sliding window over 3 x 1 patches for 32 x 96 px (W x H)")


# NoiseAR Blend --------------------------------------------------------------------------------------------
class Gaussian:
    seed = 99

    def generate_noise(self, latent):
        return fake_comfy.prepare_noise(latent["samples"], self.seed, latent.get("batch_index"))


@pytest.mark.parametrize("mode", ["linear", "variance-preserving", "slerp"])
def test_blend_endpoints_are_the_inputs_exactly(mode):
    noisear_noise = NoiseARNoiseNode().make(recording_prior(SMALL), conditioning(), 11, 0.5, SIZE_MODES[0])[0]
    latent = empty_latent(batch=2)
    at = {s: NoiseARBlendNode().make(noisear_noise, Gaussian(), s, mode, False)[0] for s in (0.0, 1.0)}
    assert torch.equal(at[0.0].generate_noise(latent), Gaussian().generate_noise(latent))
    assert torch.equal(at[1.0].generate_noise(latent), noisear_noise.generate_noise(latent))
    assert at[0.0].seed == Gaussian.seed


# NoiseAR Preview ------------------------------------------------------------------------------------------
def test_preview_shows_that_temperature_half_halves_the_std(monkeypatch, small_ckpt):
    saved = []
    monkeypatch.setattr(host, "save_temp_images", lambda images, prefix: saved.append(images) or [])
    config = NoiseARConfig(patch_size=4, channels=4, latent_height=32, latent_width=32, d_model=16, d_ff=24, text_dim=24)
    prior = NoiseARPrior(RecordingModel(config, offset=0.0), "stand-in", "auto", "fp32")
    latent = empty_latent(batch=2, height=32, width=32)
    pictures = {}
    for temperature in (1.0, 0.5):
        noisear_noise = NoiseARNoiseNode().make(prior, conditioning(), 11, temperature, SIZE_MODES[0])[0]
        pictures[temperature] = NoiseARPreviewNode().preview(noisear_noise, latent)["result"]
    (image_1, stats_1), (image_half, stats_half) = pictures[1.0], pictures[0.5]
    assert image_1.shape == (2, 128, 128, 3) and len(saved) == 2
    assert image_half.std().item() == pytest.approx(0.5 * image_1.std().item(), rel=0.05)
    assert stats_1.splitlines()[0].startswith("NoiseAR decoding: native for 256 x 256 px")
    std = lambda stats: float(stats.splitlines()[1].split("std")[1])  # noqa: E731
    assert std(stats_half) == pytest.approx(0.5 * std(stats_1), rel=0.01)


@pytest.mark.parametrize("channels", [4, 16])
def test_colour_matrix_uses_each_channel_once_and_keeps_unit_variance(channels):
    matrix = colour_matrix(channels)
    assert torch.equal((matrix > 0).sum(dim=0), torch.ones(channels, dtype=torch.long))
    torch.testing.assert_close(matrix.pow(2).sum(dim=1), torch.ones(3))
    image = noise_to_image(torch.zeros(1, channels, 2, 2), zoom=1)
    assert torch.equal(image, torch.full((1, 2, 2, 3), 0.5))


# Node metadata and packaging ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NODE_CLASS_MAPPINGS))
def test_every_node_is_described_and_every_input_and_output_has_a_tooltip(name, small_ckpt):
    node = NODE_CLASS_MAPPINGS[name]
    assert node.CATEGORY == "sampling/noise/NoiseAR" and len(node.DESCRIPTION) > 40
    assert len(node.OUTPUT_TOOLTIPS) == len(node.RETURN_TYPES) == len(node.RETURN_NAMES)
    inputs = {**node.INPUT_TYPES()["required"], **node.INPUT_TYPES().get("optional", {})}
    for input_name, (_, options) in inputs.items():
        assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
    assert set(inspect.signature(getattr(node(), node.FUNCTION)).parameters) == set(inputs)
    assert name in nodes.NODE_DISPLAY_NAME_MAPPINGS


def test_every_node_class_is_in_definitions_and_registered_with_a_display_name():
    """One module holds the node classes (the logic modules hold none), one table names them."""
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)
    for info in pkgutil.iter_modules(nodes.__path__):
        module = importlib.import_module(f"nodes.{info.name}")
        classes = [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
        node_classes = {c for c in classes if hasattr(c, "INPUT_TYPES")}
        expected = set(nodes.NODE_CLASS_MAPPINGS.values()) if info.name == "definitions" else set()
        assert node_classes == expected, info.name


def test_the_pack_imports_outside_comfyui():
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('pack', {str(REPO / '__init__.py')!r}); "
        "module = importlib.util.module_from_spec(spec); sys.modules['pack'] = module; "
        "spec.loader.exec_module(module); print(sorted(module.NODE_CLASS_MAPPINGS))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "NoiseARNoise" in result.stdout
