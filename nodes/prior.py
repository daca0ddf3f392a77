"""The NoiseAR Loader's logic: NOISEAR_MODEL (a loaded prior that stays on the CPU and visits the compute
device only to draw noise), device/dtype checks, the missing-checkpoint message and the cache of loaded priors."""

from __future__ import annotations

import logging
import os
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import noisear
from noisear import NoiseAR, NoiseARConfig
from noisear.config import listing, quoted
from noisear.families import FAMILIES
from noisear.io import FileIdentity, file_identity

from . import host
from .widgets import NoiseARNodeError, size_text

DEVICES = ("auto", "cpu", "gpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OFFLOAD_DEVICE = torch.device("cpu")

log = logging.getLogger("NoiseAR")


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
        problem = device_problem(self.device, self.dtype)
        if problem:
            raise NoiseARNodeError(f"NoiseAR Loader: {problem}")
        return OFFLOAD_DEVICE if self.device == "cpu" else host.torch_device()

    def draw(
        self,
        text: torch.Tensor,
        eps: torch.Tensor,
        temperature: float,
        text_mask: torch.Tensor | None,
        callback: Callable[[int, int], None],
    ) -> torch.Tensor:
        """Noise fp32 on the CPU shaped like the draws eps ([B,C,H,W], or [B,C,T,H,W]: see noisear.model) for text
        [1 or B, T, D] and mask [1 or B, T].

        One batch item at a time, so an item's noise never depends on the rest of the batch;
        ``callback(patches done, patches in all)`` counts over the whole batch. The weights visit the
        compute device once for the whole call, then go back to the CPU.
        """
        device = self.compute_device()
        batch, noise = eps.shape[0], []
        try:
            self.model.to(device)
            for item in range(batch):

                def item_callback(done: int, total: int, item: int = item) -> None:
                    callback(item * total + done, batch * total)

                pick = slice(item, item + 1)
                text_pick = pick if text.shape[0] > 1 else slice(0, 1)
                mask = None if text_mask is None else text_mask[pick if text_mask.shape[0] > 1 else slice(0, 1)].to(device)
                noise.append(
                    self.model.sample(
                        text[text_pick].to(device),
                        eps[pick].to(device),
                        temperature=temperature,
                        callback=item_callback,
                        text_mask=mask,
                    )
                )
            return torch.cat(noise).to(OFFLOAD_DEVICE, torch.float32)
        finally:
            self.model.to(OFFLOAD_DEVICE)
            if device.type != "cpu":
                host.soft_empty_cache()

    def describe(self) -> str:
        """The Loader's info: the family the prior serves, its size, patches, text and where it draws."""
        c = self.config
        family = FAMILIES.get(c.family_key)
        sizes = {
            "table": "other sizes by sliding-window decoding",
            "2d": "any size directly (2-D positions)",
            "3d": "any size and length (video positions)",
        }[c.positions]
        window = f", in windows of at most {c.window} patches a side" if c.window else ""
        tokens = f", at most {c.text_tokens} tokens" if c.text_tokens else ""
        return (
            f"{self.name}: {self.variant} prior for {family.title if family else 'an unknown family'}, "
            f"{'native' if c.positions == 'table' else 'trained at'} {size_text(c.latent_size, family)}, {c.channels} "
            f"channels in {' x '.join(map(str, c.patch))}-cell patches, {sizes}{window}; text width {c.text_dim}{tokens}, "
            f"{self.dtype} on {self.device}"
        )


def device_problem(device: str, dtype: str) -> str | None:
    """Why the device/dtype choice cannot run on this host, or None."""
    if device not in DEVICES:
        return f"device must be one of {', '.join(DEVICES)}, got {device!r}"
    if dtype not in DTYPES:
        return f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}"
    on_cpu = device == "cpu" or host.torch_device().type == "cpu"
    if device == "gpu" and on_cpu:
        return "device 'gpu' was chosen but ComfyUI runs on the CPU (no GPU, or --cpu); choose 'auto' or 'cpu'"
    if dtype == "fp16" and on_cpu:
        return "fp16 runs on a GPU only; choose fp32 or bf16 on the CPU"
    return None


PACK_DIR = Path(__file__).resolve().parents[1]
# the authors' published checkpoints and the diffusion models each one fits (github.com/HKUST-SAIL/NoiseAR)
PUBLISHED = {
    "sdxl_and_dreamshaper": "SDXL base 1.0 and DreamShaper-XL",
    "sdxl_and_dreamshaper_dpo": "SDXL base 1.0 and DreamShaper-XL (DPO-tuned)",
    "dit": "Hunyuan-DiT v1.2",
    "dit_dpo": "Hunyuan-DiT v1.2 (DPO-tuned)",
}


def missing_checkpoint(
    name: str, available: list[str], folders: list[str], python: str = sys.executable, pack_dir: Path = PACK_DIR
) -> str:
    """The Loader's message when ``name`` is not among the files of ``folders``: where files go, which
    published checkpoint fits which model, and the command that converts one."""
    where = " or ".join(folders) or "models/noisear"
    found = f"{quoted(name)} is not there (found: {listing(available)})" if available else "there is no checkpoint there"
    which = "; ".join(f"{stem} for {model}" for stem, model in PUBLISHED.items())
    target = os.path.join(folders[0] if folders else "models/noisear", "sdxl_and_dreamshaper.safetensors")
    return (
        f"NoiseAR Loader: NoiseAR checkpoints go in {where}; {found}. Download the authors' model.pth files "
        f"by hand (github.com/HKUST-SAIL/NoiseAR): {which}. Convert each once (or put a model.pth in a "
        f'sub-folder, e.g. dit/model.pth, it loads as it is): cd "{pack_dir}" && "{python}" -m noisear '
        f'convert path/to/sdxl_and_dreamshaper/model.pth "{target}". Then refresh (R) and pick the file.'
    )


def checkpoint_problem(name: str) -> str | None:
    """The missing-checkpoint message when ``name`` is not listed in the noisear model folders, else None."""
    available = host.checkpoint_names()
    return None if name in available else missing_checkpoint(name, available, host.model_folders())


def checkpoint_identity(name: str) -> str:
    """What the Loader's IS_CHANGED returns: the file identity of checkpoint ``name`` (noisear.io.file_identity:
    real path, device, inode, size, mtime, ctime and a hash of its first and last 64 KiB), so a file replaced
    or rewritten with the same mtime and size is read again; for a missing or unreadable file a text saying
    so (the Loader then reports it)."""
    try:
        return repr(file_identity(host.checkpoint_path(name)))
    except FileNotFoundError:
        return f"missing:{name}"
    except (OSError, ValueError) as err:
        return f"unreadable:{name}:{err}"


# Loaded priors by (file identity, dtype), held weakly: a prior lives as long as ComfyUI keeps a node
# output that uses it (its cache of the Loader's result, a NOISE being sampled). So this cache holds at most
# what ComfyUI holds, and "Free model and node cache" (or a new checkpoint in the Loader) frees the memory.
# ComfyUI offers no hook to register CPU-side memory with; its own node cache is that hook.
_cache: weakref.WeakValueDictionary[tuple, NoiseAR] = weakref.WeakValueDictionary()


def load_prior(name: str, device: str, dtype: str) -> NoiseARPrior:
    """Load (or reuse) the checkpoint ``name`` from the noisear model folder, weights on the CPU.

    Reused while any node output still holds it and the file is unchanged (same noisear.io.file_identity,
    the key IS_CHANGED gives ComfyUI too: a file replaced or rewritten on disk is read again).
    """
    problem = device_problem(device, dtype)
    if problem:
        raise NoiseARNodeError(f"NoiseAR Loader: {problem}")
    try:
        path = host.checkpoint_path(name)
    except FileNotFoundError:
        raise NoiseARNodeError(missing_checkpoint(name, host.checkpoint_names(), host.model_folders())) from None
    identity = readable_identity(name, path)
    model = _cache.get((identity, dtype))
    if model is None:
        log.info("NoiseAR: loading %s (%s)", path, dtype)
        model = noisear.load(path, device=OFFLOAD_DEVICE, dtype=DTYPES[dtype])
        if readable_identity(name, path) != identity:
            raise NoiseARNodeError(
                f"NoiseAR Loader: {name} changed while it was being read (still being copied?); queue again once "
                f"the file is complete"
            )
        _cache[(identity, dtype)] = model
    return NoiseARPrior(model, name, device, dtype)


def readable_identity(name: str, path: str) -> FileIdentity:
    """file_identity of the checkpoint, or a NoiseARNodeError saying why it cannot be read."""
    try:
        return file_identity(path)
    except OSError as err:
        raise NoiseARNodeError(f"NoiseAR Loader: cannot read {name}: {err.strerror or err}; check the file") from None
