"""Stand-ins for the parts of ComfyUI that nodes/host.py imports, following ComfyUI's documented shapes.

`install(monkeypatch, tmp_path)` puts them into nodes.host (as `comfy`, `comfy_execution`, `folder_paths` and
`latent_preview`), so the real host.py code runs against them. Facts mirrored here (read from ComfyUI's own source,
v0.3.64):
- prepare_noise(latent, seed, batch_index): one CPU generator seeded with `seed`; without
  batch_index one randn of the latent's shape; with it, one [1, C, H, W] draw per index 0..max
  in order, item k taking the draw of its index (so a split batch reproduces the full batch).
- model_sampling: EPS/V-prediction objects with a 0-d tensor sigma_max; flow models are CONST.
- A MODEL (ModelPatcher) holds its model (class comfy.model_base.SDXL, ...) as .model, whose .model_config is an
  instance of its comfy.supported_models class ("SDXL", "Flux", "FluxSchnell", "QwenImage", "WAN21_T2V", ...; the
  default fake model has none, as an object of no known family);
  get_key_patches() gives every weight's original (its backup while a patch is applied) and its patches.
- latent formats: process_in(x) = (x - shift) * scale, process_out the inverse; latent_dimensions 2, or 3 for the
  Wan 2.1 format (Wan, Qwen-Image).
- ProgressBar(total).update_absolute(value, total=None); folder_paths.folder_names_and_paths
  entries are ([dirs], extensions); get_full_path_or_raise resolves the name as
  os.path.relpath(os.path.join("/", name), "/") (a leading ".." cannot climb out of the folder);
  get_output_directory() is <base>/output (not created in advance). The fake adds no
  path checks of its own: whatever refuses a path must be the node's code.
- CLIP.tokenize(text, disable_weights=False) -> {stream: chunks of (token, weight)}: SDXL streams "l"
  and "g" in chunks of exactly 77 ([start 49406, up to 75 tokens, end 49407], padded with 49407 for
  "l" and 0 for "g"; a prompt over 75 tokens goes on in the next chunk); Hunyuan-DiT's "hydit_clip"
  is one chunk [101, tokens, 102] padded with 0 to at least 77, "mt5xl" [tokens, 1] padded to 256.
  SD3 ("l", "g", "t5xxl") and Flux ("l", "t5xxl"): T5-XXL is one chunk [tokens, end 1] padded with 0 to at least
  77 (SD3) or 256 (Flux); SD3's conditioning is its CLIP rows (77 per chunk) then its T5 rows, Flux's the T5 rows.
  encode_from_tokens_scheduled(tokens) -> [[cond [1, T, width], dict]] (Hunyuan-DiT's dict holds the
  BERT attention_mask [1, T]); CLIPSetLastLayer sets layer_idx, clone() copies it.
- Text on a node: server.PromptServer.instance.send_progress_text(text, node_id) for the node in
  comfy_execution.utils.get_executing_context() (None outside a node's execution).
- comfy.sample.fix_empty_latent_channels as ComfyUI's (channels, then a time axis for a 3-D latent format);
  comfy.sample.sample records its arguments
  (Sampling.calls) and, standing in for the sampler, returns noise + latent_image on the intermediate
  device (so a test sees which noise went in); latent_preview.prepare_callback(model, steps) makes a
  ProgressBar(steps) as ComfyUI's does.
"""

from __future__ import annotations

import os
import re
import sys
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
    draws = [torch.randn((1, *latent.shape[1:]), generator=generator, dtype=latent.dtype) for _ in range(max(noise_inds) + 1)]
    return torch.cat([draws[i] for i in noise_inds])


class EPS:
    """Discrete EPS / V-prediction sampling as ComfyUI exposes it: sigma_max is a 0-d tensor."""

    def __init__(self, sigma_max: float = SDXL_SIGMA_MAX) -> None:
        self.sigma_max = torch.tensor(sigma_max)

    def noise_scaling(self, sigma: float, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Start of sampling at sigma_max (max_denoise): noise*sqrt(1+sigma^2) + latent."""
        return noise * (1.0 + sigma**2) ** 0.5 + latent


class CONST:
    """Flow matching (SD3, Flux): x = sigma*noise + (1-sigma)*latent, sigma_max 1."""

    sigma_max = torch.tensor(1.0)


@dataclass
class LatentFormat:
    scale_factor: float = SDXL_SCALE
    shift_factor: float = 0.0
    latent_channels: int = 4
    latent_dimensions: int = 2  # 3: the Wan 2.1 format (Wan, Qwen-Image), [B, C, T, H, W]

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + self.shift_factor


class SDXL:
    """ComfyUI's model class (comfy.model_base.SDXL) as far as its name goes."""


def base_model(config: str) -> object:
    """A comfy.model_base model whose model_config is an instance of the comfy.supported_models class ``config``."""
    return type("BaseModel", (), {"model_config": type(config, (), {})()})()


def tiny_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"input.weight": torch.randn(8, 4, 3, 3, generator=generator), "out.bias": torch.randn(4, generator=generator)}


@dataclass
class Model:
    """A MODEL (ModelPatcher) as far as get_model_object, its model class and its weights go.

    get_key_patches() is ModelPatcher's: {key: [(original weight, convert function), *patches]}, the original even
    while a patch is applied; a patch is (strength_patch, value, strength_model, offset, function) as
    ModelPatcher.add_patches stores it.
    """

    sampling: object = field(default_factory=EPS)
    latent_format: LatentFormat = field(default_factory=LatentFormat)
    weights: dict = field(default_factory=tiny_weights)
    patches: dict = field(default_factory=dict)
    model: object = field(default_factory=SDXL)

    def get_model_object(self, name: str) -> object:
        return {"model_sampling": self.sampling, "latent_format": self.latent_format}[name]

    def get_key_patches(self) -> dict[str, list]:
        return {key: [(weight, None), *self.patches.get(key, [])] for key, weight in self.weights.items()}


def fix_empty_latent_channels(model: Model, latent: torch.Tensor) -> torch.Tensor:
    """An all-zero latent gets the model's channel count (ComfyUI: repeat_to_batch_size on dim 1); a 4-D latent of a
    3-D latent format gets a time axis (unsqueeze(2))."""
    latent_format = model.get_model_object("latent_format")
    channels = latent_format.latent_channels
    if channels != latent.shape[1] and torch.count_nonzero(latent) == 0:
        latent = torch.zeros(latent.shape[0], channels, *latent.shape[2:], dtype=latent.dtype)
    if latent_format.latent_dimensions == 3 and latent.ndim == 4:
        latent = latent.unsqueeze(2)
    return latent


class Sampling:
    """comfy.sample's sampling entry point, recording each call's arguments."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def sample(self, model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, **kwargs):
        self.calls.append(
            dict(
                model=model,
                noise=noise,
                steps=steps,
                cfg=cfg,
                sampler_name=sampler_name,
                scheduler=scheduler,
                positive=positive,
                negative=negative,
                latent_image=latent_image,
                **kwargs,
            )
        )
        return noise + latent_image


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


def prepare_callback(model: Model, steps: int):
    """latent_preview.prepare_callback: a ProgressBar(steps) that each sampling step advances."""
    bar = ProgressBar(steps)

    def callback(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        bar.update_absolute(step + 1, total_steps)

    return callback


class FolderPaths:
    """folder_paths with a models dir under a temporary base; extra entries like extra_model_paths.yaml."""

    def __init__(self, base: Path) -> None:
        self.models_dir = str(base / "models")
        self.folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
        self.temp_directory = str(base / "temp")
        self.output_directory = str(base / "output")  # may not exist yet

    def get_filename_list(self, folder: str) -> list[str]:
        paths, extensions = self.folder_names_and_paths[folder]
        names = set()
        for directory in paths:
            if os.path.isdir(directory):
                names.update(
                    name for name in os.listdir(directory) if not extensions or os.path.splitext(name)[1].lower() in extensions
                )
        return sorted(names)

    def get_folder_paths(self, folder: str) -> list[str]:
        return self.folder_names_and_paths[folder][0][:]

    def get_full_path_or_raise(self, folder: str, name: str) -> str:
        name = os.path.relpath(os.path.join("/", name), "/")  # as ComfyUI: a leading ".." cannot climb out
        for directory in self.folder_names_and_paths[folder][0]:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(f"Model in folder '{folder}' with filename '{name}' not found.")

    def get_temp_directory(self) -> str:
        return self.temp_directory

    def get_output_directory(self) -> str:
        return self.output_directory


CLIP_L, CLIP_G = (49406, 49407, 49407, 77, 77), (49406, 49407, 0, 77, 77)
# family -> (width, {stream: (start, end, pad, chunk length or None, minimum length)}, streams whose tokens are rows)
CLIP_FAMILIES = {
    "sdxl": (2048, {"l": CLIP_L, "g": CLIP_G}, ("l",)),
    "hunyuan": (1024, {"hydit_clip": (101, 102, 0, None, 77), "mt5xl": (None, 1, 0, None, 256)}, ("hydit_clip",)),
    "sd1": (768, {"l": CLIP_L}, ("l",)),
    "sd3": (4096, {"l": CLIP_L, "g": CLIP_G, "t5xxl": (None, 1, 0, None, 77)}, ("l", "t5xxl")),
    "flux": (4096, {"l": CLIP_L, "t5xxl": (None, 1, 0, None, 256)}, ("t5xxl",)),
}


class CLIP:
    """A text encoder: words are tokens (id 1000 + first appearance), "(word:1.2)" weighs one word.

    The fake encoding of token t with weight w at layer k is w * (t + k) in every channel (k = 0 at the
    model's default layer), so tests can read the tokens, weights and layer back; ``calls`` records
    (tokens, layer_idx) of every encode.
    """

    def __init__(self, family: str = "sdxl") -> None:
        self.family, self.layer_idx, self.tokenizer_options = family, None, {}
        self.width, self.streams, self.row_streams = CLIP_FAMILIES[family]
        self.vocab: dict[str, int] = {}
        self.calls: list[tuple[dict, int | None]] = []

    def clone(self) -> "CLIP":
        other = CLIP(self.family)
        other.layer_idx, other.tokenizer_options = self.layer_idx, dict(self.tokenizer_options)
        other.vocab, other.calls = self.vocab, self.calls
        return other

    def _words(self, text: str, disable_weights: bool) -> list[tuple[int, float]]:
        words = []
        for word in text.split():
            weighted = None if disable_weights else re.fullmatch(r"\((.+):([0-9.]+)\)", word)
            word, weight = (weighted[1], float(weighted[2])) if weighted else (word, 1.0)
            words.append((self.vocab.setdefault(word, 1000 + len(self.vocab)), weight))
        return words

    def tokenize(self, text: str, disable_weights: bool = False) -> dict[str, list[list[tuple[int, float]]]]:
        words, tokens = self._words(text, disable_weights), {}
        for stream, (start, end, pad, chunk, minimum) in self.streams.items():
            size = (chunk - 2) if chunk else max(len(words), 1)
            pieces = [words[i : i + size] for i in range(0, max(len(words), 1), size)] if chunk else [words]
            chunks = []
            for piece in pieces:
                body = ([(start, 1.0)] if start is not None else []) + piece + [(end, 1.0)]
                chunks.append(body + [(pad, 1.0)] * max(0, minimum - len(body)))
            tokens[stream] = chunks
        return tokens

    def encode_from_tokens_scheduled(self, tokens: dict) -> list:
        self.calls.append((tokens, self.layer_idx))
        first = self.row_streams[0]
        flat = [token for stream in self.row_streams for chunk in tokens[stream] for token in chunk]
        layer = 0 if self.layer_idx is None else self.layer_idx + 2
        cond = torch.tensor([[float(w) * (t + layer)] * self.width for t, w in flat]).unsqueeze(0)
        extras = {"pooled_output": torch.zeros(1, 1280)}
        if self.family == "hunyuan":
            end = self.streams[first][1]
            ends = [i for i, (t, _) in enumerate(flat) if t == end]
            extras["attention_mask"] = (torch.arange(len(flat)) <= ends[0]).long().unsqueeze(0)
        return [[cond, extras]]


class PromptServer:
    """The UI server as far as node texts go: records (node_id, text)."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def send_progress_text(self, text: str, node_id: str) -> None:
        self.texts.append((node_id, text))


def install(monkeypatch, tmp_path: Path) -> SimpleNamespace:
    """Make nodes.host talk to fakes; returns them (comfy namespace and folder_paths)."""
    from nodes import host

    ProgressBar.instances = []
    sampling = Sampling()
    schedulers = ["simple", "normal", "karras"]
    comfy = SimpleNamespace(
        model_management=ModelManagement(),
        utils=SimpleNamespace(ProgressBar=ProgressBar, PROGRESS_BAR_ENABLED=True),
        sample=SimpleNamespace(
            prepare_noise=prepare_noise, fix_empty_latent_channels=fix_empty_latent_channels, sample=sampling.sample
        ),
        model_sampling=SimpleNamespace(CONST=CONST, EPS=EPS),
        samplers=SimpleNamespace(
            SCHEDULER_NAMES=schedulers,
            KSampler=SimpleNamespace(SAMPLERS=["euler", "euler_ancestral", "dpmpp_2m"], SCHEDULERS=schedulers),
        ),
    )
    latent_preview = SimpleNamespace(prepare_callback=prepare_callback)
    folder_paths = FolderPaths(tmp_path)
    server = PromptServer()
    executing = SimpleNamespace(node_id="7")  # the id of the node "now executing"
    monkeypatch.setitem(sys.modules, "server", SimpleNamespace(PromptServer=SimpleNamespace(instance=server)))
    comfy_execution = SimpleNamespace(utils=SimpleNamespace(get_executing_context=lambda: executing))
    monkeypatch.setattr(host, "AVAILABLE", True)
    monkeypatch.setattr(host, "comfy", comfy, raising=False)
    monkeypatch.setattr(host, "comfy_execution", comfy_execution, raising=False)
    monkeypatch.setattr(host, "folder_paths", folder_paths, raising=False)
    monkeypatch.setattr(host, "latent_preview", latent_preview, raising=False)
    return SimpleNamespace(
        comfy=comfy,
        folder_paths=folder_paths,
        progress_bars=ProgressBar.instances,
        node_texts=server.texts,
        sample_calls=sampling.calls,
    )
