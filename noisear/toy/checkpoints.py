"""The shipped toy checkpoints: where they live, how they are saved and loaded, and how --retrain
rebuilds all of them from scratch (recording the command and timings in MANIFEST.md).

Toy networks are .safetensors with their config dataclass as JSON metadata; the NoiseAR priors go
through noisear.save / noisear.load.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import load as load_prior
from ..io import save as save_prior
from ..io import write_atomically
from ..model import NoiseAR
from .blog_methods import ConsistencyConfig, train_consistent_denoiser
from .classifier import ClassifierTraining, DigitClassifier, accuracy, train_classifier
from .data import load_split
from .diffusion import Denoiser, DenoiserConfig, DenoiserTraining, train_denoiser
from .noisear_prior import HELD_OUT_SEEDS, collect_golden_pairs, fine_tune_dpo, prompt_mean_shift, train_prior
from .pixel_prior import PixelPrior, PixelPriorConfig, PixelPriorTraining, train_pixel_prior

DEFAULT_DIR = Path(__file__).parent / "checkpoints"
FILES = {
    "classifier": "classifier.safetensors",
    "denoiser": "denoiser.safetensors",
    "pixel_prior": "pixel_prior.safetensors",
    "denoiser_method1": "denoiser_method1.safetensors",
    "prompt_mean_shift": "prompt_mean_shift.safetensors",
    "prior": "noisear_prior.safetensors",
    "prior_seed1": "noisear_prior_seed1.safetensors",
    "prior_dpo": "noisear_prior_dpo.safetensors",
}
HELD_OUT_FILE = "held_out.json"  # the priors' held-out metrics, recorded by --retrain
PRIORS = {"prior": 0, "prior_seed1": 1}  # checkpoint -> training seed (same data, same budget)


class ToyCheckpointError(FileNotFoundError):
    """A toy checkpoint that is missing or does not fit its network."""


def save_net(module: torch.nn.Module, path: Path, config: object | None = None) -> None:
    """Parameters (no buffers that are functions of the config) as safetensors, config as JSON metadata."""
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items() if not k.endswith(".mask")}
    metadata = {"config": json.dumps(asdict(config) if config is not None else {})}
    write_atomically(path, lambda temporary: save_file(state, str(temporary), metadata=metadata))


def load_net(cls: type, config_cls: type | None, path: Path) -> torch.nn.Module:
    """Rebuild ``cls(config)`` from a file written by :func:`save_net`, in eval mode."""
    if not path.is_file():
        raise ToyCheckpointError(
            f"missing toy checkpoint {path}; run `python -m noisear demo --retrain` to rebuild the checkpoints"
        )
    with safe_open(str(path), framework="pt") as handle:
        config = json.loads((handle.metadata() or {}).get("config", "{}"))
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    module = cls(config_cls(**config)) if config_cls is not None else cls()
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".mask")]
    if missing or unexpected:
        raise ToyCheckpointError(f"{path.name} does not fit {cls.__name__}: missing {missing}, unexpected {unexpected}")
    return module.train(False)


@dataclass
class ToyModels:
    classifier: DigitClassifier
    denoiser: Denoiser
    pixel_prior: PixelPrior
    denoiser_method1: Denoiser
    prompt_mean_shift: torch.Tensor  # [10, 1, 8, 8] per-class mean of golden minus starting noise
    prior: NoiseAR
    prior_seed1: NoiseAR
    prior_dpo: NoiseAR


def load_models(directory: Path = DEFAULT_DIR) -> ToyModels:
    """Every toy checkpoint of ``directory``."""
    d = Path(directory)
    for name in ("prior", "prior_seed1", "prior_dpo", "prompt_mean_shift"):
        if not (d / FILES[name]).is_file():
            raise ToyCheckpointError(f"missing toy checkpoint {d / FILES[name]}; run `python -m noisear demo --retrain`")
    priors = {name: load_prior(d / FILES[name]) for name in ("prior", "prior_seed1", "prior_dpo")}
    return ToyModels(
        classifier=load_net(DigitClassifier, None, d / FILES["classifier"]),
        denoiser=load_net(Denoiser, DenoiserConfig, d / FILES["denoiser"]),
        pixel_prior=load_net(PixelPrior, PixelPriorConfig, d / FILES["pixel_prior"]),
        denoiser_method1=load_net(Denoiser, DenoiserConfig, d / FILES["denoiser_method1"]),
        prompt_mean_shift=load_tensor(d / FILES["prompt_mean_shift"]),
        **priors,
    )


def load_tensor(path: Path) -> torch.Tensor:
    """The one tensor ("value") of a file written by :func:`save_tensor`."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor("value")


def save_tensor(value: torch.Tensor, path: Path) -> None:
    write_atomically(path, lambda temporary: save_file({"value": value.contiguous()}, str(temporary)))


def load_held_out(directory: Path = DEFAULT_DIR) -> dict[str, dict[str, float]]:
    """Prior checkpoint name -> its held-out metrics as recorded by --retrain ({} when absent)."""
    path = Path(directory) / HELD_OUT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@dataclass(frozen=True)
class RetrainConfig:
    """Budgets of every stage (sized for < 15 min on 2 CPU cores)."""

    classifier: ClassifierTraining = ClassifierTraining()
    denoiser: DenoiserTraining = DenoiserTraining()
    pixel_prior: PixelPriorTraining = PixelPriorTraining()
    consistency: ConsistencyConfig = ConsistencyConfig()
    golden_pairs_per_class: int = 5000  # a distinct starting noise for every (class, j)
    prior_steps: int = 1000
    prior_lr: float = 2e-3
    control_variate: bool = True  # False: plain likelihood training (learns no class shift here)
    dpo_steps: int = 100
    seed: int = 0


def retrain(
    directory: Path = DEFAULT_DIR, config: RetrainConfig = RetrainConfig(), resume: bool = False, command: str = ""
) -> dict[str, float]:
    """Train every toy checkpoint from scratch into ``directory``; returns seconds per stage.

    With ``resume`` a stage whose checkpoint exists is loaded instead of retrained.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train, test = load_split()
    timings: dict[str, float] = {}
    notes: dict[str, str] = {}

    def stage(
        name: str, build: Callable[[], object], save: Callable[[object, Path], None], load: Callable[[Path], object]
    ) -> object:
        path = d / FILES[name]
        if resume and path.is_file():
            return load(path)
        start = time.perf_counter()
        result = build()
        save(result, path)
        timings[name] = time.perf_counter() - start
        print(f"[retrain] {name}: {timings[name]:.0f} s", file=sys.stderr)
        return result

    classifier = stage(
        "classifier",
        lambda: train_classifier(train, config.classifier),
        lambda m, p: save_net(m, p),
        lambda p: load_net(DigitClassifier, None, p),
    )
    notes["classifier held-out accuracy"] = f"{accuracy(classifier, test):.4f} on {len(test)} test digits"
    denoiser = stage(
        "denoiser",
        lambda: train_denoiser(train, config.denoiser),
        lambda m, p: save_net(m, p, m.config),
        lambda p: load_net(Denoiser, DenoiserConfig, p),
    )
    pixel_prior = stage(
        "pixel_prior",
        lambda: train_pixel_prior(train, config.pixel_prior),
        lambda m, p: save_net(m, p, m.config),
        lambda p: load_net(PixelPrior, PixelPriorConfig, p),
    )
    stage(
        "denoiser_method1",
        lambda: train_consistent_denoiser(train, pixel_prior, config.consistency, config.denoiser),
        lambda m, p: save_net(m, p, m.config),
        lambda p: load_net(Denoiser, DenoiserConfig, p),
    )

    work = d / "_work"
    pairs = work / "pairs"
    held_out = load_held_out(d) if resume else {}

    def golden_pairs() -> torch.Tensor:
        shutil.rmtree(work, ignore_errors=True)
        counts = collect_golden_pairs(denoiser, classifier, pairs, config.golden_pairs_per_class)
        notes["golden pairs"] = (
            f"{counts['written']} kept, {counts['rejected']} rejected by the reward filter; "
            f"{HELD_OUT_SEEDS:.0%} of the starting noises held out for validation"
        )
        return prompt_mean_shift(pairs)

    # timed with the golden-pair collection it comes from
    stage("prompt_mean_shift", golden_pairs, lambda m, p: save_tensor(m, p), load_tensor)
    priors = {}
    for name, seed in PRIORS.items():

        def build(seed: int = seed, name: str = name) -> NoiseAR:
            if not pairs.is_dir():
                raise ToyCheckpointError(f"--resume: the golden pairs of {d} are gone; retrain without --resume")
            prior, held_out[name] = train_prior(
                pairs, work / name, config.prior_steps, seed, config.prior_lr, config.control_variate
            )
            m = held_out[name]
            notes[f"held-out, {FILES[name]} (training seed {seed})"] = (
                f"NLL {m['val_nll']:.5f} nats/dim on {int(m['val_pairs'])} pairs of unseen noises (N(0,I) "
                f"{m['nll_standard_normal']:.5f}, prompt-mean baseline {m['nll_prompt_mean']:.5f}); sample std at "
                f"T=1 {m['sample_std_t1']:.4f} (data {m['data_std']:.4f}); cosine of the mean with the class shift "
                f"{m['mean_shift_cosine']:+.3f}"
            )
            return prior

        priors[name] = stage(name, build, lambda m, p: save_prior(m, p), load_prior)
    (d / HELD_OUT_FILE).write_text(json.dumps(held_out, indent=1), encoding="utf-8")
    stage(
        "prior_dpo",
        lambda: fine_tune_dpo(priors["prior"], denoiser, classifier, work / "dpo", config.dpo_steps, config.seed),
        lambda m, p: save_prior(m, p),
        load_prior,
    )
    shutil.rmtree(d / "_work", ignore_errors=True)
    write_manifest(d, config, timings, notes, command)
    return timings


def write_manifest(
    directory: Path, config: RetrainConfig, timings: dict[str, float], notes: dict[str, str], command: str
) -> None:
    """MANIFEST.md: the command, the budgets, the time per stage, the file sizes."""
    lines = [
        "# Toy checkpoints",
        "",
        "Made by our own training code with:",
        "",
        f"    {command}",
        "",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, {torch.get_num_threads()} threads",
        "",
        "| file | bytes | stage seconds |",
        "|---|---|---|",
    ]
    for name, file in FILES.items():
        path = directory / file
        size = path.stat().st_size if path.is_file() else 0
        seconds = f"{timings[name]:.0f}" if name in timings else "(kept)"
        lines.append(f"| {file} | {size:,} | {seconds} |")
    lines += [
        "",
        *(f"- {key}: {value}" for key, value in notes.items()),
        "",
        "Budgets:",
        "",
        "```json",
        json.dumps(asdict(config), indent=1),
        "```",
        "",
    ]
    (directory / "MANIFEST.md").write_text("\n".join(lines), encoding="utf-8")
