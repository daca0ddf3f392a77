"""Sampler speed on this CPU for the published-size SDXL prior (random weights), against its roofline.

    python bench/bench_sampler.py [--reps 5] [--naive-reps 3] [--threads N]

Prints median ms per sample of the cached sampler and of the naive path (the published algorithm,
the whole prefix recomputed every step) at batch 1 and 4, their ratio, and the memory-bandwidth
roofline at batch 1: the weight bytes one decoding step must read x steps / the bandwidth of a
large fp32 matrix-vector product measured in the same run, plus the one-off text keys/values
projection. Targets (issue 6): cached <= 1.25x roofline at batch 1; cached >= 3x faster than naive
at batch 1 and >= 5x at batch 4. Figures only, no pass/fail.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from noisear import NoiseAR, NoiseARConfig  # noqa: E402

TEXT_TOKENS = 77


def median_seconds(run: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls after one warm-up call."""
    run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matvec_bandwidth(reps: int, rows: int = 8192, cols: int = 8192) -> float:
    """Bytes/s of y = W x with a 256 MiB fp32 W (far beyond the caches): the rate weights stream at."""
    weight, vector = torch.randn(rows, cols), torch.randn(1, cols)
    seconds = median_seconds(lambda: F.linear(vector, weight), max(reps, 5))
    return weight.numel() * weight.element_size() / seconds


def bytes_per_step(model: NoiseAR) -> tuple[int, int]:
    """(weight bytes a cached decoding step reads, of which the patch encoder's).

    Everything but what is used once per call: dim_adapter and the text keys/values projection
    (the last 2*d rows of each cross-attention in_proj). The patch encoder runs on steps 1..M-1.
    """
    d = model.config.d_model
    once = sum(p.numel() * p.element_size() for p in getattr(model, "dim_adapter", torch.nn.Identity()).parameters())
    for cross in model.cross_attn_layers:
        once += (cross.in_proj_weight[d:].numel() + cross.in_proj_bias[d:].numel()) * cross.in_proj_weight.element_size()
    encoder = sum(p.numel() * p.element_size() for p in model.latent_patch_encoder.parameters())
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total - once, encoder


def text_kv_seconds(model: NoiseAR, text: torch.Tensor, reps: int) -> float:
    """The one-off cost: text through dim_adapter (if any) and the keys/values projection of every layer."""
    d = model.config.d_model

    def project() -> None:
        with torch.inference_mode():
            memory = model.encode_text(text)
            for cross in model.cross_attn_layers:
                F.linear(memory, cross.in_proj_weight[d:], cross.in_proj_bias[d:])

    return median_seconds(project, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of the cached sampler (median)")
    parser.add_argument("--naive-reps", type=int, default=3, help="timed repetitions of the naive path (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = NoiseARConfig()  # published SDXL shapes; random (published-init) weights
    torch.manual_seed(0)
    model = NoiseAR(config).eval()
    steps = config.num_patches
    print(f"published-size SDXL prior: {sum(p.numel() for p in model.parameters()):,} parameters, fp32, "
          f"{steps} steps; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")

    bandwidth = matvec_bandwidth(args.reps)
    step_bytes, encoder_bytes = bytes_per_step(model)
    text1 = torch.randn(1, TEXT_TOKENS, config.text_dim)
    kv_seconds = text_kv_seconds(model, text1, args.reps)
    stream_seconds = (steps * step_bytes - encoder_bytes) / bandwidth  # no patch encoding after the last step
    roofline = stream_seconds + kv_seconds
    print(f"bandwidth (fp32 8192x8192 matrix-vector): {bandwidth / 1e9:.1f} GB/s")
    print(f"weights read per step: {step_bytes / 1e6:.0f} MB -> {stream_seconds * 1e3:.0f} ms for {steps} steps; "
          f"one-off text keys/values: {kv_seconds * 1e3:.0f} ms; roofline at batch 1: {roofline * 1e3:.0f} ms")

    per_sample: dict[tuple[str, int], float] = {}
    for batch in (1, 4):
        text = torch.randn(batch, TEXT_TOKENS, config.text_dim)
        eps = torch.randn(batch, config.channels, config.latent_height, config.latent_width)
        for name, reps in (("cached", args.reps), ("naive", args.naive_reps)):
            sampler = model.sample if name == "cached" else model.sample_naive
            per_sample[name, batch] = median_seconds(lambda: sampler(text, eps), reps) / batch
            print(f"{name:<7}batch {batch}: {per_sample[name, batch] * 1e3:7.0f} ms per sample "
                  f"(median of {reps})")

    for batch in (1, 4):
        print(f"naive / cached at batch {batch}: {per_sample['naive', batch] / per_sample['cached', batch]:.2f}x "
              f"(target >= {3 if batch == 1 else 5}x)")
    print(f"cached / roofline at batch 1: {per_sample['cached', 1] / roofline:.2f}x (target <= 1.25x); "
          f"naive / roofline: {per_sample['naive', 1] / roofline:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at end (other processes share this machine's cores)")


if __name__ == "__main__":
    main()
