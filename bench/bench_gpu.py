"""GPU speed of the published-size SDXL prior's draw and, with ComfyUI, its share of a full SDXL render.

    python bench/bench_gpu.py [--reps 5] [--warmup 2]                       # the prior's draw
    python bench/bench_gpu.py --comfyui PATH [--steps 30]                   # + a 1024 x 1024 SDXL render
    python bench/bench_gpu.py --dry-run [--comfyui PATH]                    # the whole script, tiny, on the CPU

The prior has the published SDXL shapes and structured random weights (bench_sizes.structured_prior: the
published initialisation, heads' last layers N(0, 0.02^2)). Its draw (NoiseAR.sample, cached decoding,
temperature 0.5) is timed in fp32, bf16 and fp16, at batch 1 and 4, at 1024 x 1024 px (latent 128 x 128, native)
and 1216 x 832 px (latent 104 x 152, sliding window): median of --reps timed calls after --warmup calls, each
timed with CUDA events between synchronisations. With --comfyui (run it with ComfyUI's Python), a full-size
SDXL-architecture UNet is built from ComfyUI's own classes (comfy.supported_models.SDXL, comfy.model_base.SDXL)
with random fp16 weights and renders 1024 x 1024 px through comfy.sample.sample (--steps euler steps, normal
schedule, cfg 5.5: two UNet evaluations per step); the draw's share of that render is printed per dtype.

Without a CUDA GPU it prints one line and exits 0. --dry-run runs every part on the CPU at a tiny size (a tiny
prior; with --comfyui the full-size UNet is built on the meta device to count its parameters, and a tiny one
renders 2 steps) so that the script is known to work before GPU time is spent. Figures only, no pass/fail.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sizes import structured_prior  # noqa: E402  (bench/ is on sys.path when a script in it runs)

from noisear import NoiseAR, NoiseARConfig  # noqa: E402

TEXT_TOKENS, TEMPERATURE, CFG = 77, 0.5, 5.5
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# SDXL's UNet (comfy.supported_models.SDXL's unet_config with what model detection adds for SDXL base 1.0)
SDXL_UNET = dict(
    model_channels=320,
    channel_mult=[1, 2, 4],
    num_res_blocks=[2, 2, 2],
    transformer_depth=[0, 0, 2, 2, 10, 10],
    transformer_depth_middle=10,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
    num_head_channels=64,
    context_dim=2048,
    adm_in_channels=2816,
    in_channels=4,
    out_channels=4,
    image_size=32,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    legacy=False,
    num_classes="sequential",
    dims=2,
    use_temporal_attention=False,
)
TINY_UNET = {
    **SDXL_UNET,
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": [1, 1],
    "transformer_depth": [0, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0, 1, 1],
    "num_head_channels": 16,
}
TINY_PRIOR = NoiseARConfig(patch_size=4, channels=4, latent_height=16, latent_width=16, d_model=32, d_ff=64, text_dim=2048)


@dataclass(frozen=True)
class Plan:
    """What one run measures: the device, the prior, its latent sizes {name: (H, W) cells}, dtypes, batches."""

    device: torch.device
    prior: NoiseAR
    sizes: dict[str, tuple[int, int]]
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    unet: dict
    render_latent: tuple[int, int]
    steps: int


def plan_for(args: argparse.Namespace) -> Plan:
    """The full-size plan on CUDA, or the tiny one on the CPU (--dry-run)."""
    if args.dry_run:
        torch.manual_seed(0)
        prior = NoiseAR(TINY_PRIOR).train(False)
        sizes = {"128 x 128 px (native)": (16, 16), "152 x 104 px (sliding window)": (13, 19)}
        return Plan(torch.device("cpu"), prior, sizes, ("fp32", "bf16"), (1, 4), TINY_UNET, (16, 16), 2)
    sizes = {"1024 x 1024 px (native)": (128, 128), "1216 x 832 px (sliding window)": (104, 152)}
    prior = structured_prior(NoiseARConfig().text_dim, head_std=0.02)
    return Plan(torch.device("cuda"), prior, sizes, tuple(DTYPES), (1, 4), SDXL_UNET, (128, 128), args.steps)


def median_ms(run: Callable[[], object], device: torch.device, reps: int, warmup: int) -> float:
    """Median milliseconds of ``reps`` calls after ``warmup`` calls: CUDA events between synchronisations on a
    GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            run()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def draw_times(plan: Plan, reps: int, warmup: int) -> dict[tuple[str, int, str], float]:
    """{(dtype, batch, size name): median ms per call} of the prior's draw, printed as a table."""
    text_dim, channels = plan.prior.config.text_dim, plan.prior.config.channels
    results = {}
    print("| dtype | batch | size | latent H x W | decoding | ms per call | ms per sample |")
    print("|---|---|---|---|---|---|---|")
    for dtype in plan.dtypes:
        prior = copy.deepcopy(plan.prior).to(device=plan.device, dtype=DTYPES[dtype])
        for batch in plan.batches:
            text = torch.randn(batch, TEXT_TOKENS, text_dim, device=plan.device)
            for name, (height, width) in plan.sizes.items():
                eps = torch.randn(batch, channels, height, width, device=plan.device)
                with torch.inference_mode():
                    ms = median_ms(lambda: prior.sample(text, eps, temperature=TEMPERATURE), plan.device, reps, warmup)
                results[dtype, batch, name] = ms
                decoding = prior.config.plan(height, width).describe()
                print(f"| {dtype} | {batch} | {name} | {height} x {width} | {decoding} | {ms:.1f} | {ms / batch:.1f} |")
    return results


def load_comfy(path: Path, cpu: bool):
    """ComfyUI's modules from the checkout at ``path`` (the script must run with ComfyUI's Python)."""
    if not (path / "comfy" / "model_base.py").is_file():
        raise SystemExit(f"--comfyui {path}: not a ComfyUI checkout (no comfy/model_base.py there)")
    sys.path.insert(0, str(path))
    try:
        from comfy.cli_args import args as comfy_args

        comfy_args.cpu = cpu  # before comfy.model_management picks its device
        import comfy.model_base
        import comfy.model_management
        import comfy.model_patcher
        import comfy.sample
        import comfy.supported_models
    except ImportError as err:
        raise SystemExit(f"--comfyui {path}: ComfyUI did not import ({err}); run this script with ComfyUI's Python") from err
    return comfy


def build_unet(comfy, unet: dict, device: torch.device, dtype: torch.dtype):
    """An SDXL-family model (ComfyUI's classes) with ``unet`` as its UNet config, random N(0, 0.02^2) weights."""
    config = comfy.supported_models.SDXL(dict(unet))
    config.set_inference_dtype(dtype, None)
    model = comfy.model_base.SDXL(config, device=device)
    if device.type != "meta":
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():  # ComfyUI's layers skip initialisation
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator, device=device, dtype=parameter.dtype) * 0.02)
    return model


def render_ms(comfy, plan: Plan, reps: int, warmup: int) -> float:
    """Median ms of one batch-1 text-to-image render: --steps euler steps, normal schedule, cfg CFG."""
    dtype = torch.float16 if plan.device.type == "cuda" else torch.float32
    model = build_unet(comfy, plan.unet, plan.device, dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=plan.device, offload_device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)

    def conditioning() -> list:
        return [[torch.randn(1, TEXT_TOKENS, 2048, generator=generator), {"pooled_output": torch.randn(1, 1280)}]]

    positive, negative = conditioning(), conditioning()
    latent = torch.zeros(1, 4, *plan.render_latent)
    noise = torch.randn(latent.shape, generator=generator)

    def render() -> None:
        comfy.sample.sample(
            patcher, noise, plan.steps, CFG, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=0
        )

    return median_ms(render, plan.device, reps, warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed calls per figure (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--comfyui", type=Path, metavar="PATH", help="a ComfyUI checkout: also time a full SDXL render")
    parser.add_argument("--steps", type=int, default=30, help="euler steps of the render")
    parser.add_argument("--dry-run", action="store_true", help="run every part at a tiny size on the CPU")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu: skipped, no CUDA GPU here (torch.cuda.is_available() is False); --dry-run checks the script on the CPU")
        return 0
    comfy = load_comfy(args.comfyui, cpu=args.dry_run) if args.comfyui else None
    plan = plan_for(args)
    reps, warmup = (1, 1) if args.dry_run else (args.reps, args.warmup)
    device_name = torch.cuda.get_device_name() if plan.device.type == "cuda" else "CPU (dry run, tiny sizes)"
    print(f"{device_name}; torch {torch.__version__}; {warmup} warm-up calls, median of {reps}")
    print(f"prior: {sum(p.numel() for p in plan.prior.parameters()):,} parameters, temperature {TEMPERATURE}\n")
    draws = draw_times(plan, reps, warmup)
    if comfy is None:
        return 0
    if args.dry_run:
        full = build_unet(comfy, SDXL_UNET, torch.device("meta"), torch.float16)
        print(f"\nfull-size SDXL UNet (meta device): {sum(p.numel() for p in full.diffusion_model.parameters()):,} parameters")
    render = render_ms(comfy, plan, reps, warmup)
    size = next(iter(plan.sizes))
    print(f"\nrender, batch 1, {size}: {render:.0f} ms ({plan.steps} euler steps, cfg {CFG}, random-weight UNet)")
    for dtype in plan.dtypes:
        draw = draws[dtype, 1, size]
        print(f"draw in {dtype}: {draw:.1f} ms = {100 * draw / (draw + render):.1f}% of draw + render")
    return 0


if __name__ == "__main__":
    sys.exit(main())
