"""A prior for every model family, end to end in a real ComfyUI (see conftest.py; skipped without COMFYUI_PATH).

For each family's standard graph (test_family_nodes_host.py's: its tiny random MODEL, text encoder or stand-in,
empty-latent node): the Dataset Collector writes golden pairs at two sizes (two buckets), `python -m noisear train`
designs and trains a tiny prior of the family from them (the family from the dataset, the family's patch, 2d / 3d
positions, the window from the larger bucket), the Loader loads it, and in one graph at a trained size, an
untrained size and a size wider than the window (a sliding window):
- NoiseAR KSampler samples and equals NoiseAR Noise -> SamplerCustomAdvanced for the same seed;
- the prior reads exactly the conditioning the collector stored: NoiseAR Noise's draw equals the trained prior's
  draw, computed here, from the shard's text rows and mask of that prompt and the seed's Gaussian draws (and
  another stored prompt's text gives another noise).
Run with -s to see the figures (pairs, collect / train / draw seconds, training's peak memory).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_comfyui_host import saved_latents
from test_families_host import FAMILIES as STANDARD
from test_families_host import PROMPTS
from test_family_nodes_host import GOLDEN_GUIDANCE, KEYS, NAMES, SEED, cfg_of, node, standard_nodes

from noisear import load
from noisear.families import FAMILIES
from noisear.train.data import PromptSet, ShardDataset

TRAINED = [name for name in NAMES if name != "FluxSchnell"]  # one graph per family (FluxSchnell is a Flux model)
WORDS = ("red", "blue", "green", "small", "old", "bright")
TEXTS = [*PROMPTS, *(f"{word} house by the sea" for word in WORDS[:4])]  # prompt 0 is the standard graph's
TEXT_SLOTS = 128  # every prompt here fits: stored whole, padding marked
TRAIN = ["--d-model", "32", "--d-ff", "64", "--steps", "4", "--batch-size", "4", "--warmup-steps", "1", "--lr", "0.01"]
TRAIN += ["--validation-fraction", "0", "--no-progress", "--device", "cpu"]  # a few pairs: all trained on


def patch_pixels(name: str) -> int:
    """The side of one patch of the family's default prior, in pixels."""
    family = FAMILIES[KEYS[name]]
    return family.patch_size * family.cell_pixels


def sizes(name: str) -> dict[str, tuple[int, int]]:
    """(width, height) px: the two buckets collected, a size never trained on, one wider than the window (2)."""
    u = patch_pixels(name)
    return {"square": (u, u), "wide": (2 * u, u), "tall": (u, 2 * u), "wider": (3 * u, u)}


def latent(name: str, width: int, height: int) -> dict:
    empty_class, inputs = STANDARD[name].empty_latent
    return node(empty_class, **{**inputs, "width": width, "height": height, "batch_size": 1})


def collect_graph(name: str) -> dict:
    nodes, model, _, negative, _ = standard_nodes(name)
    guidance = GOLDEN_GUIDANCE if KEYS[name] == "flux" else cfg_of(name)
    for bucket in ("square", "wide"):
        nodes[f"latent_{bucket}"] = latent(name, *sizes(name)[bucket])
        nodes[f"collect_{bucket}"] = node(
            "NoiseARDatasetCollector", model=model, clip=["clip", 0], prompts="\n".join(TEXTS), negative=negative,
            latent_image=[f"latent_{bucket}", 0], seeds_per_prompt=2, first_seed=0, scheduler="simple", steps=4,
            cfg_denoise=guidance, cfg_invert=1.0, dataset=f"family_train/{name}/{bucket}", text_tokens=TEXT_SLOTS,
            batch_size=4, shard_size=8, model_name=name,
        )  # fmt: skip
    return nodes


def sample_graph(name: str, prior: str) -> dict:
    nodes, model, positive, negative, prior_text = standard_nodes(name)
    cfg = cfg_of(name)
    nodes["prior"] = node("NoiseARLoader", ckpt_name=prior, device="auto", dtype="fp32")
    drawing = dict(noisear_model=["prior", 0], temperature=0.5, size_mode="any size")
    nodes["noise"] = node("NoiseARNoise", positive=prior_text, noise_seed=SEED, **drawing)
    nodes["select"] = node("KSamplerSelect", sampler_name="euler")
    nodes["sigmas"] = node("BasicScheduler", model=model, scheduler="simple", steps=2, denoise=1.0)
    nodes["guider"] = node("CFGGuider", model=model, positive=positive, negative=negative, cfg=cfg)
    for tag, (width, height) in sizes(name).items():
        if tag == "wide":
            continue  # the other bucket: "square" is the trained size drawn here
        nodes[f"latent_{tag}"] = latent(name, width, height)
        empty = [f"latent_{tag}", 0]
        nodes[f"ksampler_{tag}"] = node(
            "NoiseARKSampler", model=model, seed=SEED, steps=2, cfg=cfg, sampler_name="euler", scheduler="simple",
            positive=positive, negative=negative, latent_image=empty, denoise=1.0, prior_text=prior_text, **drawing,
        )  # fmt: skip
        nodes[f"custom_{tag}"] = node(
            "SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["select", 0],
            sigmas=["sigmas", 0], latent_image=empty,
        )  # fmt: skip
        outputs = [f"ksampler_{tag}", f"custom_{tag}"]
        if tag == "square":
            nodes["eps"] = node("RandomNoise", noise_seed=SEED)
            nodes["draw_prior"] = node("NoiseARTestDrawNoise", noise=["noise", 0], latent_image=empty)
            nodes["draw_eps"] = node("NoiseARTestDrawNoise", noise=["eps", 0], latent_image=empty)
            outputs += ["draw_prior", "draw_eps"]
        for output in outputs:
            nodes[f"save_{output}"] = node("SaveLatent", samples=[output, 0], filename_prefix=f"family_train/{name}_{output}")
    return nodes


def run_measured(command: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``command`` (output to ``log``) -> (exit status, wall seconds, peak resident memory in MiB of that process)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


@pytest.fixture(scope="module")
def trained(comfy, tmp_path_factory):
    """name -> (dataset, stdout of train, figures) for a family's collected pairs and its trained prior in the
    Loader's folder (family_train_<key>.safetensors)."""
    done = {}

    def run(name: str):
        if name in done:
            return done[name]
        start = time.perf_counter()
        entry = comfy.run(collect_graph(name), timeout=900)
        collect_seconds = time.perf_counter() - start
        assert entry["status"]["status_str"] == "success", entry["status"]
        data_dir = comfy.base / "output" / "family_train" / name
        out = tmp_path_factory.mktemp(f"train_{name}")
        log = out.parent / f"{out.name}.log"
        status, train_seconds, peak_mib = run_measured(
            [sys.executable, "-m", "noisear", "train", str(data_dir), "--out", str(out), *TRAIN], log
        )
        printed = log.read_text()
        assert status == 0, printed
        prior = f"family_train_{KEYS[name]}.safetensors"
        (comfy.extra_priors / prior).write_bytes((out / "prior.safetensors").read_bytes())
        figures = dict(collect_s=collect_seconds, train_s=train_seconds, train_peak_mib=peak_mib)
        done[name] = ShardDataset(data_dir), printed, prior, figures
        return done[name]

    return run


@pytest.mark.parametrize("name", TRAINED)
def test_train_designs_a_prior_of_the_collected_family_and_says_so(trained, name):
    data, printed, _, _ = trained(name)
    family, u = FAMILIES[KEYS[name]], patch_pixels(name)
    assert data.info.family == family.key and len(data) == 2 * 2 * len(TEXTS)
    cells = [(u // family.cell_pixels) * k for k in (1, 2)]
    spatial = sorted(shape[-2:] for shape in data.noise_shapes)
    assert spatial == [(cells[0], cells[0]), (cells[0], cells[1])]  # two buckets: square and wide
    block = printed[: printed.index("\n  parameters")]  # what train printed before training
    p = family.patch_size
    assert f"  family      {family.key}: {family.title} (from the dataset)" in block, printed
    assert f"  patch       {'1 x ' * family.video}{p} x {p} cells = " in block, printed
    assert ("video (frames, rows, columns)" if family.video else "2-D (rows, columns)") in block
    assert f"  window      2 patches a side{', 2 patch frames' * family.video} (" in block, printed  # the wide bucket's
    assert f"  text        {family.text_dim} wide, up to {family.text_tokens} tokens" in block, printed
    assert block.startswith(f"prior (sizes in latent cells, {'T x ' * family.video}H x W):\n")
    assert printed.rstrip().splitlines()[-1].endswith("/prior.safetensors")  # trained and written


@pytest.mark.parametrize("name", TRAINED)
def test_the_trained_prior_samples_every_size_the_same_through_both_samplers_and_reads_the_stored_text(comfy, trained, name):
    data, _, prior_name, figures = trained(name)
    entry = comfy.run(sample_graph(name, prior_name), timeout=900)
    assert entry["status"]["status_str"] == "success", entry["status"]
    latents = saved_latents(comfy, entry)
    family = FAMILIES[KEYS[name]]
    for tag, (width, height) in sizes(name).items():
        if tag == "wide":
            continue
        ksampler, custom = latents[f"ksampler_{tag}"], latents[f"custom_{tag}"]
        assert ksampler.shape == custom.shape and ksampler.shape[-1] == width // family.cell_pixels, tag
        assert ksampler.shape[-2] == height // family.cell_pixels and torch.isfinite(ksampler).all(), tag
        assert (ksampler - custom).abs().max() <= 1e-5 * max(1.0, custom.abs().max().item()), tag

    prior = load(comfy.extra_priors / prior_name)
    assert prior.config.family == family.key and prior.config.window == 2
    stored = PromptSet.from_dataset(data, None)
    drawn, eps = latents["draw_prior"], latents["draw_eps"]

    def draw(prompt: int) -> torch.Tensor:
        row = stored.strings.index(TEXTS[prompt])
        with torch.no_grad():
            return prior.sample(stored.text[row : row + 1], eps, temperature=0.5, text_mask=stored.text_mask[row : row + 1])

    start = time.perf_counter()
    expected = draw(0)
    draw_seconds = time.perf_counter() - start
    same = (drawn - expected).abs().max().item()
    other = (drawn - draw(1)).abs().max().item()
    print(
        f"\n{name}: figures pairs {len(data)} collect_s {figures['collect_s']:.1f} train_s {figures['train_s']:.1f} "
        f"train_peak_mib {figures['train_peak_mib']:.0f} draw_s {draw_seconds:.3f} (trained size {list(eps.shape)}); "
        f"node draw vs stored text {same:.2e}, vs another prompt's {other:.2e}"
    )
    assert drawn.shape == eps.shape and same <= 1e-4 * max(1.0, expected.abs().max().item())
    assert other > 100 * max(same, 1e-7)  # the text matters: a wrong conditioning would be seen
