"""What one draw costs, estimated from its decoding plan before anything is allocated, and the bound it must
stay under (``LIMITS.draw_*``). The estimate follows the sampler's own order of work (DecodingPlan.schedule).

Time model: every decoder step streams the weights once (the batch-1 bottleneck), does its arithmetic and
pays a fixed overhead (Python and kernel launches, what dominates a small prior's step); seconds = steps x
(overhead + weight bytes / bandwidth) + FLOPs / arithmetic rate, with deliberately modest rates per device
type (a 2-core CPU, a mid-range GPU). It is an estimate for refusing the absurd and warning about the slow,
not a benchmark: bench/bench_sizes.py measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import LIMITS, NoiseARConfig


@dataclass(frozen=True)
class Speed:
    bandwidth: float  # bytes per second
    flops: float  # floating-point operations per second
    step: float  # seconds of fixed overhead per decoder step


# step overhead on a CPU: a 2-layer d_model 24 prior's cached step took 1.25 ms on the loaded 2-core CPU, and a
# 4-layer 22 M prior's took about 1.2 ms more than the bandwidth and FLOP terms in a quiet moment; on a GPU assumed
DEVICE_SPEEDS = {"cpu": Speed(2e10, 1e11, 1e-3), "cuda": Speed(1e12, 3e13, 1e-4), "mps": Speed(1e11, 3e12, 2e-4)}


@dataclass(frozen=True)
class DrawCost:
    """Estimated cost of drawing ONE batch item (items are drawn one after another)."""

    patches: int  # patches decoded
    steps: int  # decoder steps (one weight read each)
    flops: float
    weight_bytes: int  # bytes of the prior's weights in its dtype
    peak_bytes: int  # caches, text keys/values and the noise at their largest, beyond the weights

    def seconds(self, device_type: str) -> float:
        speed = DEVICE_SPEEDS.get(device_type, DEVICE_SPEEDS["cpu"])
        return self.steps * (speed.step + self.weight_bytes / speed.bandwidth) + self.flops / speed.flops

    def describe(self, device_type: str) -> str:
        return (
            f"{self.patches:,} patches in {self.steps:,} decoder steps, about {self.flops / 1e12:.2g} TFLOP and "
            f"{self.peak_bytes / 2**30:.2g} GiB beyond the weights: an estimated {self.seconds(device_type):,.0f} s "
            f"per item on {device_type}"
        )


def estimate(config: NoiseARConfig, size: tuple[int, ...], text_tokens: int, dtype_bytes: int = 4) -> DrawCost:
    """The cost of drawing one item of a latent of ``size`` cells per axis ((H, W) or (T, H, W)) given
    ``text_tokens`` tokens of text, with weights of ``dtype_bytes`` bytes per value. A grid of more than
    ``LIMITS.draw_patches`` patches is not simulated: its cost is returned as infinite."""
    plan = config.plan(*size)
    d, k, layers = config.d_model, config.patch_dim, config.n_layers
    weight_bytes = config.num_values * dtype_bytes
    noise_bytes = 2 * 4 * config.channels * math.prod(plan.padded_size)  # eps and tokens, fp32
    if math.prod(plan.grid) > LIMITS.draw_patches:
        return DrawCost(math.prod(plan.grid), math.prod(plan.grid), math.inf, weight_bytes, noise_bytes)
    per_token = 2 * layers * (6 * d * d + 2 * d * config.d_ff)  # self q/k/v/out, cross q/out, FFN
    per_step = 2 * 2 * (2 * d * d + 2 * d * k)  # the mu and logvar heads, on the last position
    per_patch = 2 * (k * config.patch_hidden + config.patch_hidden * d)  # the patch encoder
    cache_bytes = 2 * layers * plan.window_length * d * dtype_bytes  # keys and values of one window
    flops, steps, live, most_live = 2.0 * layers * text_tokens * 2 * d * d, 0, 0, 0
    for step in plan.schedule():
        n, context = len(step.new), step.new.stop
        flops += n * per_token + 2 * 2 * layers * d * n * (context + text_tokens) + per_step + per_patch
        steps += 1
        live += (step.new.start == 0) - len(step.dropped)
        most_live = max(most_live, live)
    peak = most_live * cache_bytes + 2 * layers * text_tokens * d * dtype_bytes + noise_bytes
    return DrawCost(plan.patches, steps, flops, weight_bytes, peak)


def problem(cost: DrawCost, device_type: str) -> str | None:
    """Why a draw of this cost is refused (with the estimate in the message), or None."""
    seconds = cost.seconds(device_type)
    if cost.patches > LIMITS.draw_patches or seconds > LIMITS.draw_seconds or cost.peak_bytes > LIMITS.draw_bytes:
        return (
            f"this draw is too large: {cost.describe(device_type)}. The bound is {LIMITS.draw_seconds:.0f} s, "
            f"{LIMITS.draw_bytes / 2**30:.0f} GiB and {LIMITS.draw_patches:,} patches per item (see docs/comfyui.md). "
            f"Use a smaller latent, fewer frames, or a prior with larger patches or a smaller window"
        )
    return None
