"""Draw time and peak memory of a family-sized own prior at each model family's common sizes, next to the
library's own estimate (noisear.cost), on the CPU and on CUDA when there is one.

    python bench/bench_families.py [--reps 1] [--threads N] [--families wan flux ...] [--cuda-only]
    python bench/bench_families.py --quick   # a small prior at one small size per family: checks the bench runs

The prior of each family is what an own prior of that family looks like: NoiseARConfig with the family's channels,
text width, default patch (noisear.families: patch_size, patch_frames), "2d" positions ("3d" for video), an
unbounded window, and a modest transformer: d_model 512, d_ff 2048, 4 layers, 8 heads (FAMILY_PRIOR), randomly
initialised (the published initialisation), fp32, trained-at size the family's first common size. Each draw is
one item, temperature 0.5, from a prompt of TEXT_TOKENS tokens (SD3: its 77 CLIP rows plus them). Per size: the
median draw time of --reps draws (after one draw of a single patch, untimed), the peak memory of the draw beyond
what was allocated before it (CPU: the process's peak resident memory, VmHWM, reset before each draw through
/proc/self/clear_refs; CUDA: torch.cuda.max_memory_allocated), and noisear.cost's estimate of both for that device
type (DrawCost.seconds, DrawCost.peak_bytes), with the ratio measured / estimated. Figures only, no pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from noisear import NoiseAR, NoiseARConfig  # noqa: E402
from noisear.families import FAMILIES, Family  # noqa: E402

# The transformer of every family prior here; the family gives channels, text width, patch and positions.
FAMILY_PRIOR = NoiseARConfig(d_model=512, d_ff=2048, n_layers=4, n_heads=8)
QUICK_PRIOR = NoiseARConfig(d_model=64, d_ff=128, n_layers=1, n_heads=2)  # --quick
TEXT_TOKENS = 64  # a prompt of about 60 words and its end token
TEMPERATURE = 0.5


@dataclass(frozen=True)
class Size:
    width: int  # px
    height: int  # px
    frames: int = 0  # video frames (0: an image)

    def cells(self, family: Family) -> tuple[int, ...]:
        """The latent's size in cells: (H, W), or (T, H, W) for video (Wan: 1 + (frames - 1) / 4 latent frames)."""
        space = (self.height // family.cell_pixels, self.width // family.cell_pixels)
        return (1 + (self.frames - 1) // family.frame_stride, *space) if family.video else space

    def __str__(self) -> str:
        return f"{self.width} x {self.height} px" + (f" x {self.frames} frames" if self.frames else "")


# Each family's common sizes: its standard graph's size first (workflows/), then a common other one.
SIZES: dict[str, list[Size]] = {
    "sdxl": [Size(1024, 1024), Size(1216, 832)],
    "hunyuan-dit": [Size(1024, 1024), Size(1280, 768)],
    "sd3": [Size(1024, 1024), Size(1216, 832)],
    "flux": [Size(1024, 1024), Size(1216, 832)],
    "chroma": [Size(1024, 1024), Size(1216, 832)],
    "chroma-radiance": [Size(1024, 1024)],
    "lumina2": [Size(1024, 1024), Size(1216, 832)],
    "qwen-image": [Size(1328, 1328), Size(1664, 928)],
    "hunyuan-image-2.1": [Size(2048, 2048), Size(2560, 1536)],
    "wan": [Size(832, 480, 33), Size(832, 480, 81)],
    "wan2.2-5b": [Size(1280, 704, 121), Size(832, 480, 81)],
}


def quick_sizes(family: Family) -> list[Size]:
    """--quick's one size: two default patches per side (video: 2 latent frames)."""
    side = 2 * family.patch_size * family.cell_pixels
    return [Size(side, side, 1 + family.frame_stride if family.video else 0)]


def family_prior(family: Family, transformer: NoiseARConfig, sizes: list[Size]) -> NoiseAR:
    """The family's prior (``transformer``'s width and depth), trained-at size the first of ``sizes``, on the CPU."""
    first = sizes[0].cells(family)
    whole = [-(-side // family.patch_size) * family.patch_size for side in first[-2:]]  # whole patches
    video = dict(latent_frames=first[0], patch_frames=family.patch_frames) if family.video else {}
    config = replace(
        transformer,
        family=family.key,
        channels=family.channels,
        text_dim=family.text_dim,
        patch_size=family.patch_size,
        latent_height=whole[0],
        latent_width=whole[1],
        positions="3d" if family.video else "2d",
        **video,
    )
    torch.manual_seed(0)
    return NoiseAR(config).train(False)


def text_tokens(family: Family) -> int:
    return TEXT_TOKENS + (77 if family.key == "sd3" else 0)


def draw_inputs(model: NoiseAR, size: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(text [1, T, D], eps [1, C, *size]) of one item, and one untimed draw of a single patch (warm-up)."""
    family = FAMILIES[model.config.family]
    text = torch.randn(1, text_tokens(family), family.text_dim, device=device)
    eps = torch.randn(1, family.channels, *size, device=device)
    with torch.inference_mode():
        model.sample(text, eps[(..., *(slice(0, n) for n in model.config.patch))])
    return text, eps


def draw_seconds(model: NoiseAR, size: tuple[int, ...], device: torch.device, reps: int) -> float:
    """Median seconds of ``reps`` draws of one item."""
    text, eps = draw_inputs(model, size, device)
    times = []
    with torch.inference_mode():
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            model.sample(text, eps, temperature=TEMPERATURE)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def draw_peak(model: NoiseAR, size: tuple[int, ...], device: torch.device) -> int:
    """Peak bytes of one draw beyond what was allocated before it: torch's CUDA allocator's peak, or on the CPU
    the process's peak resident memory (VmHWM, reset to the resident memory through /proc/self/clear_refs)."""
    text, eps = draw_inputs(model, size, device)
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
            before = status_bytes("VmRSS")
        model.sample(text, eps, temperature=TEMPERATURE)
        return (torch.cuda.max_memory_allocated() if device.type == "cuda" else status_bytes("VmHWM")) - before


def cpu_peaks(families: list[str], quick: bool, threads: int | None) -> dict[str, list[int]]:
    """draw_peak on the CPU for each family's sizes, measured in one child process in which glibc maps every
    allocation of 64 KiB or more fresh and unmaps it when freed (MALLOC_MMAP_THRESHOLD_), so that the resident
    memory follows the draw's tensors instead of the heap's high-water mark. (The page faults slow those draws:
    they are not the timed ones.)"""
    command = [sys.executable, __file__, "--peaks-of", *families] + (["--quick"] if quick else [])
    command += ["--threads", str(threads)] if threads else []
    child = subprocess.run(
        command, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}, capture_output=True, text=True, check=True
    )
    return json.loads(child.stdout.splitlines()[-1])


@dataclass(frozen=True)
class Bench:
    """What is measured: the families, their sizes and the prior's transformer (full or --quick)."""

    families: list[str]
    quick: bool

    def sizes(self, family: Family) -> list[Size]:
        return quick_sizes(family) if self.quick else SIZES[family.key]

    def prior(self, family: Family) -> NoiseAR:
        return family_prior(family, QUICK_PRIOR if self.quick else FAMILY_PRIOR, self.sizes(family))


def table(bench: Bench, device: torch.device, reps: int, threads: int | None) -> None:
    print(
        f"\n{device.type}: fp32, batch 1, median of {reps} draw(s)\n\n| family | size | latent cells | patches "
        "| estimate s | measured s | measured / estimate | estimate peak MiB | measured peak MiB |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    peaks = cpu_peaks(bench.families, bench.quick, threads) if device.type == "cpu" else {}
    for key in bench.families:
        family = FAMILIES[key]
        model = bench.prior(family).to(device)
        for i, size in enumerate(bench.sizes(family)):
            cells = size.cells(family)
            estimate = model.draw_cost(cells, text_tokens(family))
            seconds = draw_seconds(model, cells, device, reps)
            peak = peaks[key][i] if peaks else draw_peak(model, cells, device)
            print(
                f"| {family.title} | {size} | {' x '.join(map(str, cells))} | {estimate.patches:,} "
                f"| {estimate.seconds(device.type):.3g} | {seconds:.3g} | {seconds / estimate.seconds(device.type):.2f} "
                f"| {estimate.peak_bytes / 2**20:.1f} | {peak / 2**20:.1f} |"
            )
        del model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1, help="timed draws per size (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--families", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--cuda-only", action="store_true", help="skip the CPU table")
    parser.add_argument("--quick", action="store_true", help="a small prior at one small size per family (seconds)")
    parser.add_argument("--peaks-of", nargs="+", metavar="FAMILY", help=argparse.SUPPRESS)  # cpu_peaks' child
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peaks_of:
        bench = Bench(args.peaks_of, args.quick)
        peaks = {}
        for key in bench.families:
            family = FAMILIES[key]
            model = bench.prior(family)
            peaks[key] = [draw_peak(model, size.cells(family), torch.device("cpu")) for size in bench.sizes(family)]
        print(json.dumps(peaks))
        return
    bench = Bench(args.families, args.quick)
    prior = QUICK_PRIOR if args.quick else FAMILY_PRIOR
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at start{' (--quick)' if args.quick else ''}; prior: d_model {prior.d_model}, "
        f"d_ff {prior.d_ff}, {prior.n_layers} layers, {prior.n_heads} heads; text {TEXT_TOKENS} tokens "
        f"(SD3: 77 + {TEXT_TOKENS})\n\n| family | patch (cells) | parameters |\n|---|---|---|"
    )
    for key in bench.families:
        model = bench.prior(FAMILIES[key])
        parameters = sum(parameter.numel() for parameter in model.parameters())
        print(f"| {FAMILIES[key].title} | {' x '.join(map(str, model.config.patch))} | {parameters / 1e6:.1f} M |")
    if not args.cuda_only:
        table(bench, torch.device("cpu"), args.reps, args.threads)
    if torch.cuda.is_available():
        table(bench, torch.device("cuda"), args.reps, args.threads)
    else:
        print("\ncuda: no CUDA device here, skipped")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
