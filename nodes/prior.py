"""NOISEAR_MODEL: a loaded prior that stays on the CPU and visits the compute device only to draw noise."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

import noisear
from noisear import NoiseAR, NoiseARConfig

from . import host

DEVICES = ("auto", "cpu", "gpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OFFLOAD_DEVICE = torch.device("cpu")

log = logging.getLogger("NoiseAR")


class NoiseARNodeError(ValueError):
    """Wrong input to a NoiseAR node; the message says what was expected and what to do."""


@dataclass
class NoiseARPrior:
    """What flows on a NOISEAR_MODEL link.

    ``model`` lives on the CPU (the offload device) between draws, so the prior never holds VRAM
    while the diffusion model samples.
    """

    model: NoiseAR
    name: str
    device: str  # "auto" | "cpu" | "gpu"
    dtype: str  # key of DTYPES

    @property
    def config(self) -> NoiseARConfig:
        return self.model.config

    @property
    def variant(self) -> str:
        return self.config.variant

    @property
    def published(self) -> bool:
        """Shapes of a published checkpoint (SDXL or Hunyuan-DiT): 77 tokens, no mask, native 128x128."""
        return self.variant != "own"

    def compute_device(self) -> torch.device:
        """The device draws run on: the host's torch device, or the CPU when asked."""
        if self.device == "cpu":
            return OFFLOAD_DEVICE
        device = host.torch_device()
        if self.device == "gpu" and device.type == "cpu":
            raise NoiseARNodeError(
                "NoiseAR Loader: device 'gpu' was chosen but ComfyUI runs on the CPU (no GPU, or --cpu); "
                "choose 'auto' or 'cpu'")
        if device.type == "cpu" and self.dtype == "fp16":
            raise NoiseARNodeError("NoiseAR Loader: fp16 runs on a GPU only; choose fp32 or bf16 on the CPU")
        return device

    def draw(self, text: torch.Tensor, eps: torch.Tensor, temperature: float, text_mask: torch.Tensor | None,
             callback: Callable[[int, int], None]) -> torch.Tensor:
        """Noise [B,C,H,W] fp32 on the CPU for text [1 or B, T, D] and draws eps [B,C,H,W].

        Moves the weights to the compute device for this call only, then back to the CPU.
        """
        device = self.compute_device()
        try:
            self.model.to(device)
            noise = self.model.sample(text.to(device), eps.to(device), temperature=temperature,
                                      text_mask=None if text_mask is None else text_mask.to(device),
                                      callback=callback)
            return noise.to(OFFLOAD_DEVICE, torch.float32)
        finally:
            self.model.to(OFFLOAD_DEVICE)
            if device.type != "cpu":
                host.soft_empty_cache()

    def describe(self) -> str:
        c = self.config
        return (f"{self.name}: {self.variant} prior, latent {c.channels}x{c.latent_height}x{c.latent_width} "
                f"in {c.patch_size}x{c.patch_size} patches, text width {c.text_dim}, {self.dtype} on {self.device}")


_cache: dict[tuple[str, float, str], NoiseAR] = {}


def load_prior(name: str, device: str, dtype: str) -> NoiseARPrior:
    """Load (or reuse) the checkpoint ``name`` from the noisear model folder, weights on the CPU.

    Cached by (path, modification time, dtype): a file replaced on disk is read again, and older
    entries of the same path are dropped.
    """
    if device not in DEVICES:
        raise NoiseARNodeError(f"NoiseAR Loader: device must be one of {DEVICES}, got {device!r}")
    if dtype not in DTYPES:
        raise NoiseARNodeError(f"NoiseAR Loader: dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    path = host.checkpoint_path(name)
    key = (path, os.path.getmtime(path), dtype)
    if key not in _cache:
        for stale in [k for k in _cache if k[0] == path]:
            del _cache[stale]
        log.info("NoiseAR: loading %s (%s)", path, dtype)
        _cache[key] = noisear.load(path, device=OFFLOAD_DEVICE, dtype=DTYPES[dtype])
    prior = NoiseARPrior(_cache[key], name, device, dtype)
    prior.compute_device()  # refuse impossible device/dtype pairs now, not at sampling time
    return prior
