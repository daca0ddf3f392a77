"""Why the padding is Gaussian: band stds next to the crop edge under three ways of padding eps.

    python bench/bench_padding.py [--seeds 4] [--head-std 0.02] [--threads 1]

Sizes whose latent is not whole 32-cell patches are padded up before decoding and cropped after.
The padded cells are never seen, but they belong to patches that later patches are conditioned on.
This samples the structured SDXL-size prior of bench_sizes.py at 1216 x 832, 1152 x 896 and
1344 x 768 px with the padding the sampler uses (Gaussian draws seeded by eps), with zeros and with
a mirror of eps (swapped in for `noisear.model.pad_eps`), and prints the std of every band of 32
latent rows and columns, averaged over the seeds; the last band is next to the crop edge.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sizes import band_stds, structured_prior  # noqa: E402

import noisear.model  # noqa: E402
from noisear.patches import DecodingPlan, pad_eps  # noqa: E402


def zeros(eps: torch.Tensor, plan: DecodingPlan) -> torch.Tensor:
    p = plan.patch_size
    return F.pad(eps, (0, plan.cols * p - eps.shape[3], 0, plan.rows * p - eps.shape[2]))


def mirror(eps: torch.Tensor, plan: DecodingPlan) -> torch.Tensor:
    p = plan.patch_size
    return F.pad(eps, (0, plan.cols * p - eps.shape[3], 0, plan.rows * p - eps.shape[2]), mode="reflect")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--head-std", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = structured_prior(2048, args.head_std)
    text = torch.randn(1, 77, 2048, generator=torch.Generator().manual_seed(1))
    print(f"heads' last layers N(0, {args.head_std}^2), {args.seeds} seeds, load average {os.getloadavg()[0]:.1f}")
    for width, height in [(1216, 832), (1152, 896), (1344, 768)]:
        for name, padding in (("gaussian (used)", pad_eps), ("zeros", zeros), ("mirror", mirror)):
            noisear.model.pad_eps = padding
            rows, cols = [], []
            for seed in range(args.seeds):
                eps = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(100 + seed))
                noise = model.sample(text, eps)
                rows.append(band_stds(noise, 2))
                cols.append(band_stds(noise, 3))
            row_bands = [f"{v:.3f}" for v in torch.tensor(rows).mean(0).tolist()]
            col_bands = [f"{v:.3f}" for v in torch.tensor(cols).mean(0).tolist()]
            print(f"{width} x {height} px, {name:<16} row bands {' '.join(row_bands)} | col bands {' '.join(col_bands)}")
    noisear.model.pad_eps = pad_eps


if __name__ == "__main__":
    main()
