"""Sampler speed on this CPU for the published-size SDXL prior (random weights), against its roofline.

    python bench/bench_sampler.py [--reps 5] [--naive-reps 3] [--threads N]

Prints, in one run, median ms per sample of the cached sampler in fp32 and bf16 at batch 1 and 4
against the memory-bandwidth roofline: the weight bytes one decoding step must read x steps / the
bandwidth of a large fp32 matrix-vector product measured in the same run, plus the one-off text
keys/values projection (the fp32 roofline is the yardstick for both precisions; bf16 reads half
the bytes); and each precision's draw against its own matrix products (OwnMatrices: the same
weights times the same rows, nothing else), which isolates what attention, norms, casts and
allocation add. Also: the naive path (the published algorithm, the whole prefix recomputed every
step) at batch 1 and 4 (--naive-reps 0 skips it), sliding-window decoding at 1216 x 832 px against
the native size, and the largest deviation of a bf16 sample from the fp32 one (heads' last layers
N(0, 0.02^2) so that mu and logvar vary).

Targets: fp32 cached <= 1.25x the fp32 roofline at batch 1; bf16 <= 0.7x the fp32 roofline at
batch 1; fp32 and bf16 batch-1 draws each <= 1.2x their own matrices; sliding window at
1216 x 832 <= 1.6x native; cached >= 3x faster than naive at batch 1 and >= 5x at batch 4.
Figures only, no pass/fail; quote the load average it prints, and time on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sizes import structured_prior  # noqa: E402  (bench/ is on sys.path when a script in it runs)

from noisear import NoiseAR, NoiseARConfig  # noqa: E402

TEXT_TOKENS = 77


def alternated_medians(runs: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median wall seconds of each call, the calls alternated rep by rep after one warm-up each.

    Alternating keeps the ratios between them meaningful when other processes change the load.
    """
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


class MatVec:
    """y = W x with a 256 MiB fp32 W (far beyond the caches): the rate weights stream at."""

    def __init__(self, rows: int = 8192, cols: int = 8192) -> None:
        self.weight, self.vector = torch.randn(rows, cols), torch.randn(1, cols)
        self.bytes = self.weight.numel() * self.weight.element_size()

    def __call__(self) -> torch.Tensor:
        return F.linear(self.vector, self.weight)


class OwnMatrices:
    """The sampler's own matrix products and nothing else: what a draw of ``batch`` samples must multiply.

    Every cached step multiplies one row per sample by each layer's weights (self-attention in_proj
    and out_proj, the query rows of cross-attention in_proj and its out_proj, the FFN, both heads);
    steps 1..M-1 also run the patch encoder; once per call, the text goes through the keys/values rows
    of each cross-attention in_proj (dim_adapter, when present, too). Same dtype as the model.
    """

    def __init__(self, model: NoiseAR, batch: int, text_tokens: int) -> None:
        d, dtype = model.config.d_model, next(model.parameters()).dtype
        self.steps = model.config.num_patches
        self.per_step = [layer.in_proj_weight for layer in model.self_attn_layers]
        self.per_step += [layer.out_proj.weight for layer in model.self_attn_layers]
        self.per_step += [layer.in_proj_weight[:d] for layer in model.cross_attn_layers]
        self.per_step += [layer.out_proj.weight for layer in model.cross_attn_layers]
        self.per_step += [
            m.weight
            for block in (*model.ffn_layers, model.prediction_head_mu, model.prediction_head_logvar)
            for m in block
            if isinstance(m, torch.nn.Linear)
        ]
        self.encoder = [m.weight for m in model.latent_patch_encoder if isinstance(m, torch.nn.Linear)]
        self.once = [layer.in_proj_weight[d:] for layer in model.cross_attn_layers]
        self.once += [model.dim_adapter.weight] if model.config.has_text_adapter else []
        self.rows = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=dtype) for w in self.per_step + self.encoder}
        self.tokens = {w.shape[1]: torch.randn(batch, text_tokens, w.shape[1], dtype=dtype) for w in self.once}

    @torch.inference_mode()
    def __call__(self) -> None:
        for weight in self.once:
            F.linear(self.tokens[weight.shape[1]], weight)
        for step in range(self.steps):
            for weight in self.per_step + (self.encoder if step else []):
                F.linear(self.rows[weight.shape[1]], weight)


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

    return alternated_medians({"project": project}, reps)["project"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of the cached sampler (median)")
    parser.add_argument("--naive-reps", type=int, default=3, help="timed repetitions of the naive path (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = NoiseARConfig()  # published SDXL shapes
    model = structured_prior(config.text_dim, head_std=0.02)
    half = copy.deepcopy(model).to(torch.bfloat16)
    steps = config.num_patches
    print(
        f"published-size SDXL prior: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{steps} steps; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )

    matvec = MatVec()
    matvec()
    streamed: dict[str, tuple[int, int]] = {"fp32": bytes_per_step(model), "bf16": bytes_per_step(half)}
    kv_seconds = {
        (name, batch): text_kv_seconds(prior, torch.randn(batch, TEXT_TOKENS, config.text_dim), args.reps)
        for name, prior in (("fp32", model), ("bf16", half))
        for batch in (1, 4)
    }

    def roofline(name: str, batch: int, bandwidth: float) -> float:
        """Seconds per sample: weights read by ``steps`` cached steps at ``bandwidth``, plus the text keys/values."""
        step_bytes, encoder_bytes = streamed[name]  # no patch encoding after the last step
        return ((steps * step_bytes - encoder_bytes) / bandwidth + kv_seconds[name, batch]) / batch

    for name, (step_bytes, _) in streamed.items():
        print(
            f"{name}: weights read per step {step_bytes / 1e6:.0f} MB; one-off text keys/values "
            f"{kv_seconds[name, 1] * 1e3:.0f} ms at batch 1"
        )
    print(
        "timed calls alternate with an fp32 8192x8192 matrix-vector product (the roofline uses its median "
        "bandwidth) and with each precision's own matrix products (OwnMatrices)"
    )

    per_sample: dict[tuple[str, int], float] = {}
    ratio: dict[tuple[str, int], float] = {}
    own_ratio: dict[tuple[str, int], float] = {}
    for batch in (1, 4):
        text = torch.randn(batch, TEXT_TOKENS, config.text_dim)
        eps = torch.randn(batch, config.channels, config.latent_height, config.latent_width)
        runs: dict[str, Callable[[], object]] = {"matvec": matvec}
        for name, prior in (("fp32", model), ("bf16", half)):
            runs[name] = lambda prior=prior: prior.sample(text, eps)
            runs[f"{name} own"] = OwnMatrices(prior, batch, TEXT_TOKENS)
        seconds = alternated_medians(runs, args.reps)
        if args.naive_reps:
            seconds["naive"] = alternated_medians({"naive": lambda: model.sample_naive(text, eps)}, args.naive_reps)["naive"]
        bandwidth = matvec.bytes / seconds["matvec"]
        fp32_roofline = roofline("fp32", batch, bandwidth)
        for name in ("fp32", "bf16", "naive")[: 3 if args.naive_reps else 2]:
            per_sample[name, batch] = seconds[name] / batch
            ratio[name, batch] = per_sample[name, batch] / fp32_roofline
            own = ""
            if name != "naive":  # the naive path has no matrices of its own to compare with
                own_ratio[name, batch] = seconds[name] / seconds[f"{name} own"]
                own = f"; {own_ratio[name, batch]:.2f}x its own matrices ({seconds[f'{name} own'] * 1e3:.0f} ms)"
            print(
                f"{name:<6} batch {batch}: {per_sample[name, batch] * 1e3:7.0f} ms per sample; "
                f"bandwidth {bandwidth / 1e9:.1f} GB/s -> fp32 roofline {fp32_roofline * 1e3:.0f} ms"
                + (f", bf16 roofline {roofline('bf16', batch, bandwidth) * 1e3:.0f} ms" if name == "bf16" else "")
                + f"; {ratio[name, batch]:.2f}x the fp32 roofline"
                + own
            )

    text, native_eps = torch.randn(1, TEXT_TOKENS, config.text_dim), torch.randn(1, 4, 128, 128)
    wide_eps = torch.randn(1, 4, 104, 152)  # 1216 x 832 px: a sliding window over 4 x 5 patches
    timed = alternated_medians(
        {"sliding": lambda: model.sample(text, wide_eps), "native": lambda: model.sample(text, native_eps)}, args.reps
    )
    sliding, native = timed["sliding"], timed["native"]
    deviation = (half.sample(text, native_eps) - model.sample(text, native_eps)).abs()
    print(
        f"sliding window at 1216 x 832 px: {sliding * 1e3:.0f} ms vs native {native * 1e3:.0f} ms: "
        f"{sliding / native:.2f}x (target <= 1.6x; 20 patches vs 16)"
    )
    print(
        f"bf16 vs fp32 sample (same eps, noise std {model.sample(text, native_eps).std().item():.2f}): "
        f"max |difference| {deviation.max().item():.4f}, mean {deviation.mean().item():.5f}"
    )

    print(
        f"fp32 cached / fp32 roofline at batch 1: {ratio['fp32', 1]:.2f}x (target <= 1.25x); "
        f"bf16 cached / fp32 roofline: {ratio['bf16', 1]:.2f}x (target <= 0.7x)"
    )
    print(
        f"sampler / its own matrices at batch 1: fp32 {own_ratio['fp32', 1]:.2f}x, bf16 {own_ratio['bf16', 1]:.2f}x "
        "(target <= 1.2x each)"
    )
    if args.naive_reps:
        for batch in (1, 4):
            print(
                f"naive / cached at batch {batch}: {per_sample['naive', batch] / per_sample['fp32', batch]:.2f}x "
                f"(target >= {3 if batch == 1 else 5}x)"
            )
    print(f"load average {os.getloadavg()[0]:.1f} at end (other processes share this machine's cores)")


if __name__ == "__main__":
    main()
