"""Every SDXL bucket and Hunyuan-DiT size through a published-size prior: speed and noise statistics.

    python bench/bench_sizes.py [--samples 3] [--bf16-reps 2] [--threads 1] [--variants SDXL Hunyuan-DiT]

The prior has the published shapes (SDXL: 2048-d text; Hunyuan-DiT: 1024-d text through dim_adapter)
and structured random weights: the published initialisation, then the last layer of both heads drawn
N(0, 0.02^2), so mu and logvar vary with the text, the position and the earlier patches (an untrained
prior's heads give ~N(0, I) everywhere, which would hide any effect of the window). The same random
text serves every size. For each size it prints, as a markdown table:

- decoding and patches decoded; median ms per sample in fp32 (over the --samples draws) and in bf16;
- std of the noise over the whole latent / the native (1024 x 1024 px) std, each averaged over the
  draws; the same per band of one patch (32 cells) of rows and of columns, min-max over the bands,
  and for the last band (next to the crop edge, partly cropped when the side is not a multiple of
  256 px);
- the Pearson correlation of co-located values of neighbouring patches (right and down neighbours,
  a partly cropped patch on its visible part), mean over pairs: pairs predicted by the same window
  ("inside"), by different windows ("across" a window boundary); the native sample's is printed last.

Figures only, no pass/fail. Run it with --threads 1 on a shared machine and quote the load it prints.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from noisear import NoiseAR, NoiseARConfig  # noqa: E402

SIZES = {  # (width, height) px; 8 px per latent cell
    "SDXL": [
        (1024, 1024),
        (1152, 896),
        (896, 1152),
        (1216, 832),
        (832, 1216),
        (1344, 768),
        (768, 1344),
        (1536, 640),
        (640, 1536),
    ],
    "Hunyuan-DiT": [(1024, 1024), (1280, 1280), (1024, 768), (768, 1024), (1280, 960), (960, 1280), (1280, 768), (768, 1280)],
}
TEXT_WIDTH = {"SDXL": 2048, "Hunyuan-DiT": 1024}
TEXT_TOKENS, HEAD_STD, PATCH = 77, 0.02, 32


def structured_prior(text_dim: int, head_std: float, seed: int = 0) -> NoiseAR:
    """Published shapes, published init, heads' last layers N(0, head_std^2) with zero bias."""
    torch.manual_seed(seed)
    model = NoiseAR(NoiseARConfig(text_dim=text_dim)).eval()
    with torch.no_grad():
        for head in (model.prediction_head_mu, model.prediction_head_logvar):
            head[2].weight.normal_(0.0, head_std)
    return model


def band_stds(noise: torch.Tensor, dim: int) -> list[float]:
    """Std of each band of PATCH rows (dim 2) or columns (dim 3) of noise [1, C, H, W]; the last may be partial."""
    return [band.std().item() for band in noise.split(PATCH, dim=dim)]


def neighbour_correlations(noise: torch.Tensor, model: NoiseAR) -> tuple[list[float], list[float]]:
    """(inside, across): correlations of co-located visible values of neighbouring patches, by whether
    the same window predicted both (a partly cropped patch is compared on its visible part)."""
    plan = model.config.plan(noise.shape[2], noise.shape[3])
    rows, cols = plan.visible

    def patch(r: int, c: int) -> torch.Tensor:
        return noise[0, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH]

    inside, across = [], []
    for r in range(rows):
        for c in range(cols):
            for r2, c2 in ((r, c + 1), (r + 1, c)):
                if r2 < rows and c2 < cols:
                    second = patch(r2, c2)
                    first = patch(r, c)[:, : second.shape[1], : second.shape[2]]
                    value = torch.corrcoef(torch.stack([first.flatten(), second.flatten()]))[0, 1].item()
                    same = plan.origin(r * plan.cols + c) == plan.origin(r2 * plan.cols + c2)
                    (inside if same else across).append(value)
    return inside, across


def timed(run) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3, help="fp32 draws per size (statistics and median time)")
    parser.add_argument("--bf16-reps", type=int, default=2, help="timed bf16 draws per size (median); 0 skips bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--variants", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--head-std", type=float, default=HEAD_STD, help="std of the heads' last-layer weights")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start; {args.samples} fp32 draws, {args.bf16_reps} bf16 per size"
    )
    for variant in args.variants:
        model = structured_prior(TEXT_WIDTH[variant], args.head_std)
        half = copy.deepcopy(model).to(torch.bfloat16) if args.bf16_reps else None
        text = torch.randn(1, TEXT_TOKENS, TEXT_WIDTH[variant], generator=torch.Generator().manual_seed(1))
        model.sample(text, torch.randn(1, 4, 128, 128))  # warm-up
        native_std = native_inside = None
        print(f"\n{variant} prior, heads' last layers N(0, {args.head_std}^2), temperature 0.5\n")
        print(
            "| W x H px | latent H x W | decoding | patches | fp32 ms | bf16 ms | bf16 max dev | std / native "
            "| row bands / native | col bands / native | last row / col band | corr inside / across |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for width, height in SIZES[variant]:
            shape = (1, 4, height // 8, width // 8)
            plan = model.config.plan(*shape[2:])
            seconds, stds, rows, cols, inside, across, draws = [], [], [], [], [], [], []
            for seed in range(args.samples):
                eps = torch.randn(shape, generator=torch.Generator().manual_seed(100 + seed))
                noise, took = timed(lambda: model.sample(text, eps))
                seconds.append(took)
                draws.append((eps, noise))
                stds.append(noise.std().item())
                rows.append(band_stds(noise, 2))
                cols.append(band_stds(noise, 3))
                pairs = neighbour_correlations(noise, model)
                inside += pairs[0]
                across += pairs[1]
            if native_std is None:  # the first size is 1024 x 1024
                native_std, native_inside = mean(stds), mean(inside)
            row_bands = [mean([r[i] for r in rows]) / native_std for i in range(len(rows[0]))]
            col_bands = [mean([c[i] for c in cols]) / native_std for i in range(len(cols[0]))]
            bf16_ms = deviation = "-"
            if half is not None:
                eps, noise = draws[0]
                times = []
                for _ in range(args.bf16_reps):
                    low, took = timed(lambda: half.sample(text, eps))
                    times.append(took)
                bf16_ms = f"{statistics.median(times) * 1e3:.0f}"
                deviation = f"{(low - noise).abs().max().item():.3f}"
            across_text = f"{mean(across):.3f}" if across else "-"
            print(
                f"| {width} x {height} | {shape[2]} x {shape[3]} | {plan.describe()} | {plan.patches} "
                f"| {statistics.median(seconds) * 1e3:.0f} | {bf16_ms} | {deviation} | {mean(stds) / native_std:.3f} "
                f"| {min(row_bands):.3f}-{max(row_bands):.3f} | {min(col_bands):.3f}-{max(col_bands):.3f} "
                f"| {row_bands[-1]:.3f} / {col_bands[-1]:.3f} | {mean(inside):.3f} / {across_text} |"
            )
        print(f"\nnative std {native_std:.4f}; native neighbour correlation {native_inside:.3f}")
    print(f"\nload average {os.getloadavg()[0]:.1f} at end (other processes share this machine's cores)")


if __name__ == "__main__":
    main()
