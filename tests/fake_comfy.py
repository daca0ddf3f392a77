"""Stand-ins for the parts of ComfyUI that nodes/host.py imports, following ComfyUI's documented shapes.

`install(monkeypatch, tmp_path)` puts them into nodes.host (as `comfy` and `folder_paths`), so the
real host.py code runs against them. Facts mirrored here (see /work/shared/reference/comfyui-host.md):
- prepare_noise(latent, seed, batch_index): one CPU generator seeded with `seed`; without
  batch_index one randn of the latent's shape; with it, one [1, C, H, W] draw per index 0..max
  in order, item k taking the draw of its index (so a split batch reproduces the full batch).
- model_sampling: EPS/V-prediction objects with a 0-d tensor sigma_max; flow models are CONST.
- latent formats: process_in(x) = (x - shift) * scale, process_out the inverse.
- ProgressBar(total).update_absolute(value, total=None); folder_paths.folder_names_and_paths
  entries are ([dirs], extensions).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

SDXL_SIGMA_MAX = 14.6146
SDXL_SCALE = 0.13025


def prepare_noise(latent: torch.Tensor, seed: int, noise_inds: list[int] | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if noise_inds is None:
        return torch.randn(latent.shape, generator=generator, dtype=latent.dtype)
    draws = [torch.randn((1, *latent.shape[1:]), generator=generator, dtype=latent.dtype)
             for _ in range(max(noise_inds) + 1)]
    return torch.cat([draws[i] for i in noise_inds])


class EPS:
    """Discrete EPS / V-prediction sampling as ComfyUI exposes it: sigma_max is a 0-d tensor."""

    def __init__(self, sigma_max: float = SDXL_SIGMA_MAX) -> None:
        self.sigma_max = torch.tensor(sigma_max)

    def noise_scaling(self, sigma: float, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Start of sampling at sigma_max (max_denoise): noise*sqrt(1+sigma^2) + latent."""
        return noise * (1.0 + sigma ** 2) ** 0.5 + latent


class CONST:
    """Flow matching (SD3, Flux): x = sigma*noise + (1-sigma)*latent, sigma_max 1."""

    sigma_max = torch.tensor(1.0)


@dataclass
class LatentFormat:
    scale_factor: float = SDXL_SCALE
    shift_factor: float = 0.0
    latent_channels: int = 4

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + self.shift_factor


@dataclass
class Model:
    """A MODEL (ModelPatcher) as far as get_model_object goes."""

    sampling: object = field(default_factory=EPS)
    latent_format: LatentFormat = field(default_factory=LatentFormat)

    def get_model_object(self, name: str) -> object:
        return {"model_sampling": self.sampling, "latent_format": self.latent_format}[name]


class InterruptProcessingException(Exception):
    pass


class ModelManagement:
    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.interrupted = False
        self.cache_emptied = 0

    def get_torch_device(self) -> torch.device:
        return self.device

    def intermediate_device(self) -> torch.device:
        return torch.device("cpu")

    def soft_empty_cache(self) -> None:
        self.cache_emptied += 1

    def throw_exception_if_processing_interrupted(self) -> None:
        if self.interrupted:
            self.interrupted = False
            raise InterruptProcessingException()


class ProgressBar:
    instances: list["ProgressBar"] = []

    def __init__(self, total: int) -> None:
        self.total, self.current, self.updates = total, 0, []
        ProgressBar.instances.append(self)

    def update_absolute(self, value: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        self.updates.append(self.current)


class FolderPaths:
    """folder_paths with a models dir under a temporary base; extra entries like extra_model_paths.yaml."""

    def __init__(self, base: Path) -> None:
        self.models_dir = str(base / "models")
        self.folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
        self.temp_directory = str(base / "temp")

    def get_filename_list(self, folder: str) -> list[str]:
        paths, extensions = self.folder_names_and_paths[folder]
        names = set()
        for directory in paths:
            if os.path.isdir(directory):
                names.update(name for name in os.listdir(directory)
                             if not extensions or os.path.splitext(name)[1].lower() in extensions)
        return sorted(names)

    def get_full_path_or_raise(self, folder: str, name: str) -> str:
        for directory in self.folder_names_and_paths[folder][0]:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(f"Model in folder '{folder}' with filename '{name}' not found.")

    def get_temp_directory(self) -> str:
        return self.temp_directory


def install(monkeypatch, tmp_path: Path) -> SimpleNamespace:
    """Make nodes.host talk to fakes; returns them (comfy namespace and folder_paths)."""
    from nodes import host

    ProgressBar.instances = []
    comfy = SimpleNamespace(
        model_management=ModelManagement(),
        utils=SimpleNamespace(ProgressBar=ProgressBar),
        sample=SimpleNamespace(prepare_noise=prepare_noise),
        model_sampling=SimpleNamespace(CONST=CONST, EPS=EPS),
        samplers=SimpleNamespace(SCHEDULER_NAMES=["simple", "normal", "karras"]),
    )
    folder_paths = FolderPaths(tmp_path)
    monkeypatch.setattr(host, "AVAILABLE", True)
    monkeypatch.setattr(host, "comfy", comfy, raising=False)
    monkeypatch.setattr(host, "folder_paths", folder_paths, raising=False)
    return SimpleNamespace(comfy=comfy, folder_paths=folder_paths, progress_bars=ProgressBar.instances)
