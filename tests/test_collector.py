"""NoiseAR Dataset Collector without ComfyUI: what it writes, resuming, the reward filter, and the trainer reading it."""

from __future__ import annotations

import json
import math
import os

import fake_comfy
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_golden_node import Net, comfy_denoised

from nodes import host, text_encode
from nodes.collector import stored_text
from nodes.definitions import DatasetCollectorNode, GoldenNoiseNode
from nodes.widgets import NoiseARNodeError
from noisear import NoiseARConfig
from noisear.train.collect import EmbeddingMismatch, PromptItem, SizeMismatch, collect
from noisear.train.data import SEED_SCHEME, Batch, DatasetInfo, ShardDataset, ShardWriter, pair_seed, prompt_index
from noisear.train.likelihood import train_likelihood
from noisear.train.loop import TrainConfig

WIDTH = 8
SIGMAS = torch.tensor([14.6146, 10.0, 5.0, 0.0])


class Clip:
    """Encodes a prompt as a [1, 5 + len(words), WIDTH] tensor derived from its text, times ``scale`` (another
    scale plays another text encoder, or other settings)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def tokenize(self, text: str, **options) -> str:  # ComfyUI's CLIP.tokenize takes options too
        return text

    def encode_from_tokens_scheduled(self, text: str) -> list:
        seed = sum(map(ord, text))
        cond = self.scale * torch.randn(1, 5 + len(text.split()), WIDTH, generator=torch.Generator().manual_seed(seed))
        return [[cond, {"pooled_output": torch.zeros(1, 4)}]]


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    installed = fake_comfy.install(monkeypatch, tmp_path)
    net, installed.golden_runs = Net(gain=0.5), []

    def run_guided(model, positive, negative, noise, sigmas, seed, work, embedded_guidance=False):
        installed.golden_runs.append(noise.shape[0])
        scale = math.sqrt(1 + float(sigmas[0]) ** 2)
        cond, uncond = float(positive[0][0].mean()), float(negative[0][0].mean())
        denoised = comfy_denoised(net, "epsilon", lambda s: s, cond, uncond)
        return work(lambda x, s, c: denoised(x.double(), s, c).float(), noise * scale, scale)

    monkeypatch.setattr(host, "schedule_sigmas", lambda model, scheduler, steps: SIGMAS[: steps + 1])
    monkeypatch.setattr(host, "prediction_kind", lambda model: "epsilon")
    monkeypatch.setattr(host, "run_guided", run_guided)
    monkeypatch.setattr(host, "encode_text", lambda clip, text: clip.encode_from_tokens_scheduled(clip.tokenize(text)))
    return installed


NEGATIVE = [[torch.zeros(1, 5, WIDTH), {}]]


def run(
    prompts: str,
    k: int = 3,
    dataset: str = "set",
    reward=None,
    margin: float = 0.0,
    height: int = 8,
    width: int = 8,
    model=None,
    clip=None,
    model_name: str = "tiny",
) -> str:
    """Queue the collector once; the same MODEL (a new object with the same weights) and CLIP unless given."""
    latent = {"samples": torch.zeros(1, 4, height, width)}
    model, clip = model or fake_comfy.Model(), clip or Clip()
    return DatasetCollectorNode().collect(
        model, clip, prompts, NEGATIVE, latent, k, 10, "normal", 3, 5.5, 1.0, dataset, 12, 2, 4, model_name, reward, margin
    )["result"][0]


def test_writes_the_golden_noise_of_every_prompt_and_seed_with_its_embedding(fakes, tmp_path):
    summary = run("a red cube\n\n  a blue sphere on grass  \na red cube\n")
    assert "wrote 6" in summary
    data = ShardDataset(tmp_path / "output" / "set")
    assert len(data) == 6 and data.item_shapes == {"text": (12, WIDTH), "noise": (4, 8, 8)}
    assert data.info.prediction == "epsilon" and data.info.steps == 3 and data.info.guidance_denoise == 5.5
    assert set(data.prompts().values()) == {"a red cube", "a blue sphere on grass"}
    assert data.info.seed_scheme == SEED_SCHEME and data.seed_counts()["distinct_seeds"] == 6  # no noise repeats
    batch = Batch.concat(list(data.iterate()))
    seed = pair_seed(10, prompt_index("a blue sphere on grass"), 1)  # first_seed 10, j = 1
    row = [i for i in range(6) if batch.prompt_index[i] == prompt_index("a blue sphere on grass") and batch.seed[i] == seed][0]
    node_noise = GoldenNoiseNode().make(
        fake_comfy.Model(), Clip().encode_from_tokens_scheduled("a blue sphere on grass"), NEGATIVE, seed, "normal", 3, 5.5, 1.0
    )[0]
    expected = node_noise.generate_noise({"samples": torch.zeros(1, 4, 8, 8)})
    torch.testing.assert_close(batch.noise[row], expected[0])  # the node's golden noise for that seed
    text, mask = stored_text(Clip().encode_from_tokens_scheduled("a blue sphere on grass"), None, 12)
    assert torch.equal(batch.text[row], text) and torch.equal(batch.text_mask[row], mask)
    assert mask.tolist() == [True] * 10 + [False] * 2


@pytest.mark.parametrize("family", ["sdxl", "hunyuan"])
def test_the_prior_is_trained_on_what_noisear_text_encode_gives_at_inference(fakes, tmp_path, family):
    clip, prompt = fake_comfy.CLIP(family), "a (red:1.3) car " + "word " * 90  # weighted and over 75 tokens
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    DatasetCollectorNode().collect(
        fake_comfy.Model(), clip, prompt, NEGATIVE, latent, 2, 10, "normal", 3, 5.5, 1.0, "exact", 77, 2, 4, "tiny"
    )
    stored = Batch.concat(list(ShardDataset(tmp_path / "output" / "exact").iterate())).text
    conditioning, prior_text, _ = text_encode.encode(clip, prompt)
    assert torch.equal(stored[0], stored_text(prior_text, None, 77)[0])  # the prompt-exact route's embedding
    assert not torch.equal(stored[0], conditioning[0][0][0, :77])  # not CLIPTextEncode's (weights)


def test_a_rerun_skips_written_pairs_and_adds_only_new_prompts_and_seeds(fakes, tmp_path):
    run("one\ntwo")
    fakes.golden_runs.clear()
    assert "wrote 0, skipped 6" in run("one\ntwo") and fakes.golden_runs == []
    assert "wrote 6, skipped 6" in run("two\nthree\none", k=4)  # j = 3 for one and two, four for three
    data = ShardDataset(tmp_path / "output" / "set")
    assert len(data.pairs()) == len(data) == 12


def test_an_interrupted_run_resumes_without_duplicates(fakes, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = host.throw_if_interrupted

    def interrupt_on_the_fifth_call():
        calls["n"] += 1
        if calls["n"] == 5:
            raise fake_comfy.InterruptProcessingException()
        real()

    monkeypatch.setattr(host, "throw_if_interrupted", interrupt_on_the_fifth_call)
    with pytest.raises(fake_comfy.InterruptProcessingException):
        run("one\ntwo\nthree")
    partial = len(ShardDataset(tmp_path / "output" / "set"))
    assert 0 < partial < 9
    monkeypatch.setattr(host, "throw_if_interrupted", real)
    assert f"skipped {partial}" in run("one\ntwo\nthree")
    data = ShardDataset(tmp_path / "output" / "set")
    assert len(data) == len(data.pairs()) == 9


def test_the_reward_filter_keeps_pairs_that_improve_by_more_than_the_margin(fakes, tmp_path):
    direction = torch.randn(4 * 8 * 8, generator=torch.Generator().manual_seed(0))

    def reward(noise, conditioning):  # a fixed random linear score
        return noise.flatten(1) @ direction

    summary = run("one\ntwo", k=4, reward=reward)
    data = ShardDataset(tmp_path / "output" / "set")
    kept, rejected = len(data), int(summary.split("rejected ")[1].split()[0])
    assert kept + rejected == 8 and rejected > 0 and kept > 0
    assert "rejected 8" in run("one\ntwo", k=4, dataset="strict", reward=reward, margin=1e6)


def test_the_trainer_reads_the_collected_set(fakes, tmp_path):
    run("\n".join(f"prompt number {i}" for i in range(8)), k=4)
    config = NoiseARConfig(
        patch_size=4, channels=4, latent_height=8, latent_width=8, d_model=16, d_ff=32, text_dim=WIDTH, positions="2d"
    )
    prior = train_likelihood(
        tmp_path / "output" / "set",
        TrainConfig(
            out_dir=str(tmp_path / "run"), steps=3, batch_size=8, warmup_steps=1, progress=False, validation_fraction=0.25
        ),
        config,
    )
    assert (tmp_path / "run" / "prior.safetensors").exists()
    assert prior.sample(torch.zeros(1, 12, WIDTH), torch.randn(1, 4, 8, 8)).shape == (1, 4, 8, 8)


def test_the_node_runs_again_whenever_queued():
    first, second = DatasetCollectorNode.IS_CHANGED(), DatasetCollectorNode.IS_CHANGED()
    assert first != second  # ComfyUI re-executes a node whose IS_CHANGED differs from the last run's


def test_empty_prompts_and_dataset_names_are_refused(fakes):
    with pytest.raises(NoiseARNodeError, match="one prompt per line"):
        run("  \n\n")
    with pytest.raises(NoiseARNodeError, match="must name a folder"):
        run("one", dataset=" ")


# What makes a pair: the folder's latent size, MODEL and text encoder, then (prompt, seed) --------------------
def shard_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.safetensors"))}


def test_another_latent_size_is_refused_naming_both_sizes_and_the_sibling_folder(fakes, tmp_path):
    run("one\ntwo", dataset="sets/64x64")
    before = shard_bytes(tmp_path / "output" / "sets" / "64x64")
    with pytest.raises(
        NoiseARNodeError,
        match=r"sets/64x64 holds latents of 64 x 64 px \(W x H\), latent 8 x 8 cells \(H x W\); this latent is "
        r"64 x 128 px \(W x H\), latent 16 x 8 cells \(H x W\)\. A dataset folder holds one size: set dataset to "
        r"sets/64x128",
    ):
        run("one\ntwo", dataset="sets/64x64", height=16)
    assert shard_bytes(tmp_path / "output" / "sets" / "64x64") == before
    assert "wrote 6" in run("one\ntwo", dataset="sets/64x128", height=16)
    assert ShardDataset(tmp_path / "output" / "sets").noise_shapes == [(4, 8, 8), (4, 16, 8)]  # two buckets


def test_another_latent_size_in_a_folder_not_named_by_its_size_gets_a_folder_of_its_own(fakes, tmp_path):
    run("one", dataset="mine")
    with pytest.raises(NoiseARNodeError, match=r"set dataset to a folder of its own for this size, e\.g\. mine_64x128"):
        run("one", dataset="mine", height=16)


def test_the_folder_that_holds_the_size_folders_is_not_written_into(fakes, tmp_path):
    run("one", dataset="sets/64x64")
    with pytest.raises(ValueError, match=r"sets holds size folders \(64x64\)"):
        run("one", dataset="sets", height=16)
    assert sorted(os.listdir(tmp_path / "output" / "sets")) == ["64x64"]


LORA_PATCH = (0.8, torch.ones(4), 1.0, None, None)  # as ModelPatcher.add_patches stores one


@pytest.mark.parametrize(
    "other, differs",
    [
        (lambda: fake_comfy.Model(weights=fake_comfy.tiny_weights(seed=1)), "the weights"),
        (
            lambda: fake_comfy.Model(patches={"out.bias": [(0.8, torch.ones(4), 1.0, None, None)]}),
            r"the weight patches \(LoRAs\)",
        ),
        (lambda: fake_comfy.Model(model=type("SD3", (), {})()), "the model class"),
    ],
    ids=["weights", "a LoRA", "model class"],
)
def test_another_model_under_the_same_name_is_refused(fakes, tmp_path, other, differs):
    run("one\ntwo")
    before = shard_bytes(tmp_path / "output" / "set")
    with pytest.raises(NoiseARNodeError, match=rf"set was collected with another MODEL \(what differs: {differs}\)"):
        run("one\ntwo", k=4, model=other())
    assert shard_bytes(tmp_path / "output" / "set") == before
    assert "skipped 6" in run("one\ntwo", model=fake_comfy.Model())  # the same weights in a new MODEL: same model


@pytest.mark.parametrize(
    "prompts, k", [("one\ntwo", 3), ("one\ntwo", 4), ("three", 3)], ids=["rerun", "more seeds", "new prompt"]
)
def test_another_text_encoder_is_refused_whatever_the_prompts(fakes, tmp_path, prompts, k):
    run("one\ntwo")
    before = shard_bytes(tmp_path / "output" / "set")
    with pytest.raises(
        ValueError, match=r"embedding of prompt '(one|two)' in .*set differs from what the text encoder gives now"
    ):
        run(prompts, k=k, clip=Clip(scale=2.0))
    assert shard_bytes(tmp_path / "output" / "set") == before


def test_a_precision_sized_change_of_the_embeddings_still_resumes(fakes):
    run("one\ntwo")
    assert "wrote 2, skipped 6" in run("one\ntwo", k=4, clip=Clip(scale=1.001))


def strip_model_identity(folder) -> None:
    """Rewrite the shards as the collector wrote them before it recorded the MODEL's identity."""
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            tensors, metadata = {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()
        info = json.loads(metadata["info"])
        del info["model_identity"]
        save_file(tensors, str(path), metadata={**metadata, "info": json.dumps(info)})


def test_a_folder_from_before_model_identities_resumes_and_says_the_model_was_not_checked(fakes, tmp_path):
    run("one\ntwo")
    folder = tmp_path / "output" / "set"
    strip_model_identity(folder)
    summary = run("one\ntwo", k=4, model=fake_comfy.Model(weights=fake_comfy.tiny_weights(seed=1)))
    assert "wrote 2, skipped 6" in summary and "the MODEL could not be checked" in summary
    data = ShardDataset(folder)  # one info across old and new shards
    assert len(data) == len(data.pairs()) == 8 and data.info.model_identity == {}
    with pytest.raises(ValueError, match=r"embedding of prompt '(one|two)' .* differs"):  # the embeddings still are checked
        run("one\ntwo", clip=Clip(scale=2.0))


def test_the_model_identity_reads_a_few_values_of_each_weight_and_names_the_patches(fakes):
    identity = host.model_identity(fake_comfy.Model())
    assert identity == host.model_identity(fake_comfy.Model()) and identity["class"] == "SDXL"
    assert identity["patches"] == "none" and len(identity["weights"]) == 16
    weights = fake_comfy.tiny_weights()
    weights["input.weight"][0, 0, 0, 1] += 1.0  # between the sampled positions: not seen (documented)
    assert host.model_identity(fake_comfy.Model(weights=weights)) == identity
    weights["input.weight"][0, 0, 0, 0] += 1.0  # a sampled position
    assert host.model_identity(fake_comfy.Model(weights=weights))["weights"] != identity["weights"]
    patched = host.model_identity(fake_comfy.Model(patches={"out.bias": [LORA_PATCH]}))
    assert patched["weights"] == identity["weights"] and patched["patches"] != "none"
    sampling = {**fake_comfy.tiny_weights(), "model_sampling.sigmas": torch.linspace(0.03, 14.6, 1000)}
    assert host.model_identity(fake_comfy.Model(weights=sampling)) == identity  # recorded as prediction and sigmas
    unreadable = host.model_identity(fake_comfy.Model(weights={"w": torch.empty(3, 4, device="meta")}))
    assert unreadable["weights"] != identity["weights"]  # named by its name, shape and dtype
    with pytest.raises(ValueError, match=r"the MODEL input \(object\) is not a ComfyUI model"):
        host.model_identity(object())


def test_the_library_loop_checks_the_size_and_the_embeddings_before_any_golden_noise(tmp_path):
    """noisear.train.collect.collect, as any host calls it: the checks are the loop's, not the node's."""
    calls = []

    def golden(noise, item, seeds):
        calls.append(seeds)
        return noise

    def item(index, scale=1.0):
        return PromptItem(index, scale * torch.ones(3, 4), cond=None, prompt=f"p{index}")

    info = DatasetInfo(seed_scheme=SEED_SCHEME)
    with ShardWriter(tmp_path, info) as writer:
        collect(golden, writer, [item(0)], 2, (1, 2, 2))
    calls.clear()
    with ShardWriter(tmp_path, info) as writer, pytest.raises(SizeMismatch) as mismatch:
        collect(golden, writer, [item(0)], 3, (1, 4, 2))
    assert (mismatch.value.held, mismatch.value.given) == ((1, 2, 2), (1, 4, 2))
    with ShardWriter(tmp_path, info) as writer, pytest.raises(EmbeddingMismatch, match=r"prompt 'p0' .*by 100%"):
        collect(golden, writer, [item(0, scale=2.0)], 3, (1, 2, 2))
    with ShardWriter(tmp_path, info) as writer, pytest.raises(EmbeddingMismatch, match=r"prompt 'p0' .*by 50%"):
        collect(golden, writer, [item(1, scale=0.5)], 2, (1, 2, 2), probe=item(0, scale=0.5))
    assert calls == [] and len(ShardDataset(tmp_path)) == 2
