"""The digits testbed (``python -m noisear demo``): scikit-learn's 8x8 digits, the class plays the prompt.

Its prompt is the one-hot class [B, 1, 10] through the prior's ``dim_adapter`` (text_dim 10 -> d_model): one
cross-attention token, no prompt held out (an unseen one-hot class has an untrained embedding), so the held-out
figures are on unseen starting noises. The judge (noisear.toy.classifier.DigitClassifier) scores the table; the
reward model (RewardMLP, another architecture, seed and split) filters the golden pairs and rewards DPO.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..config import NoiseARConfig
from ..golden import GoldenConfig, golden_noise
from ..io import load as load_prior
from ..io import save as save_prior
from ..model import NoiseAR
from ..train import evaluate as evaluation
from ..train.collect import PromptItem
from ..train.data import Batch, PromptSet, ShardDataset
from ..train.metrics import standard_normal_nll_per_dim
from . import demo
from .blog_methods import ConsistencyConfig, ar_blend_noise, train_consistent_denoiser
from .checkpoints import (
    DEFAULT_DIR,
    FILES,
    HELD_OUT_FILE,
    Stages,
    load_held_out,
    load_net,
    load_tensor,
    missing,
    save_tensor,
    save_with_config,
)
from .classifier import ClassifierConfig, ClassifierTraining, DigitClassifier, RewardConfig, RewardMLP, accuracy, train_classifier
from .data import IMAGE_SHAPE, NUM_CLASSES, load_split, split_half
from .diffusion import Denoiser, DenoiserConfig, DenoiserTraining, ddim_sample, schedule, train_denoiser, unconditional
from .metrics import DIGITS_METRICS, JudgeMetrics, Reference, score_digits
from .noisear_prior import (
    HELD_OUT_FIRST_SEED,
    HELD_OUT_SEEDS,
    collect_pairs,
    dataset_info,
    fine_tune_dpo,
    linear_baselines,
    load_pairs,
    nll_table,
    nll_values,
    prior_nll,
    prompt_mean_shift,
    standard_normal,
    train_prior,
)
from .pixel_prior import PixelPrior, PixelPriorConfig, PixelPriorTraining, train_pixel_prior

PRIOR_CONFIG = NoiseARConfig(
    patch_size=2,
    channels=1,
    latent_height=8,
    latent_width=8,
    d_model=64,
    d_ff=128,
    n_layers=2,
    n_heads=4,
    text_dim=NUM_CLASSES,
    dropout=0.1,
)
GOLDEN = GoldenConfig(guidance_denoise=5.5, guidance_invert=1.0, margin=0.0)  # the paper's recipe
STEPS, GUIDANCE = 25, 1.0  # the regime the noise is made and scored for
METHOD2_ALPHA = 0.2
REWARD_SPLIT_SEED = 1  # the reward model trains on this seeded half of the training digits
GOLDEN_ROW = f"golden re-denoise (w_l {GOLDEN.guidance_denoise:g})"
LINEAR_MEAN = "prompt-mean Gaussian (mean linear in the prompt embedding)"
FULL_COVARIANCE = "full-covariance Gaussian (mean and covariance linear in the prompt embedding; no autoregression)"
UNSEEN_NOISES = "unseen noises"
PRIORS = {"prior": 0, "prior_seed1": 1}  # checkpoint -> training seed (same data, same budget)
PRIOR_LABELS = {
    "prior": "NoiseAR prior (training seed 0)",
    "prior_seed1": "NoiseAR prior" + demo.SEED1,
    "prior_dpo": "NoiseAR DPO (from training seed 0)",
}


def class_text(labels: torch.Tensor) -> torch.Tensor:
    """labels [B] -> the prior's text embedding [B, 1, 10] (one-hot)."""
    return torch.nn.functional.one_hot(labels, NUM_CLASSES).float()[:, None, :]


def class_prompts(labels: torch.Tensor) -> PromptSet:
    """The classes ``labels`` as a PromptSet (index = class label, one-hot text, one token)."""
    return PromptSet(class_text(labels), torch.ones(len(labels), 1, dtype=torch.bool), labels)


@dataclass
class DigitsModels:
    classifier: DigitClassifier  # the judge
    reward: RewardMLP
    denoiser: Denoiser
    pixel_prior: PixelPrior
    denoiser_method1: Denoiser
    prompt_mean_shift: torch.Tensor  # [10, 1, 8, 8] per-class mean of golden minus starting noise
    prior: NoiseAR
    prior_seed1: NoiseAR
    prior_dpo: NoiseAR


def reward_function(denoiser: Denoiser, reward: RewardMLP) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(noise [B,1,8,8], labels [B] or [1]) -> the reward model's log-probability [B] of the requested class on
    the image that noise makes (DDIM, STEPS steps, guidance GUIDANCE)."""

    @torch.no_grad()
    def score(noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.expand(noise.shape[0])
        images = ddim_sample(denoiser, noise, labels, steps=STEPS, guidance=GUIDANCE)
        return reward(images).log_softmax(-1).gather(1, labels[:, None])[:, 0]

    return score


def collect_golden_pairs(
    denoiser: Denoiser, reward: RewardMLP, out_dir: str | Path, per_class: int, first_seed: int = 0
) -> dict[str, int]:
    """Golden noise (the paper's recipe) for ``per_class`` distinct starting noises of every class, kept where the
    reward model's score rises."""
    items = [
        PromptItem(
            index=k,
            text=class_text(torch.tensor([k]))[0],
            cond=torch.tensor([k]),
            uncond=unconditional(torch.tensor([k])),
            prompt=f"digit {k}",
        )
        for k in range(NUM_CLASSES)
    ]

    def golden(noise: torch.Tensor, item: PromptItem, seeds: list[int]) -> torch.Tensor:
        return golden_noise(denoiser, schedule(STEPS), noise, item.cond, item.uncond, GOLDEN)

    info = dataset_info("noisear.toy denoiser", GOLDEN)
    return collect_pairs(out_dir, golden, items, per_class, IMAGE_SHAPE, info, reward_function(denoiser, reward), first_seed)


def load(directory: Path = DEFAULT_DIR) -> DigitsModels:
    """Every checkpoint of the digits testbed in ``directory``."""
    d = Path(directory)
    for name in ("prior", "prior_seed1", "prior_dpo"):
        if not (d / FILES[name]).is_file():
            raise missing(d / FILES[name], "digits")
    return DigitsModels(
        classifier=load_net(DigitClassifier, ClassifierConfig, d / FILES["classifier"]),
        reward=load_net(RewardMLP, RewardConfig, d / FILES["reward"]),
        denoiser=load_net(Denoiser, DenoiserConfig, d / FILES["denoiser"]),
        pixel_prior=load_net(PixelPrior, PixelPriorConfig, d / FILES["pixel_prior"]),
        denoiser_method1=load_net(Denoiser, DenoiserConfig, d / FILES["denoiser_method1"]),
        prompt_mean_shift=load_tensor(d / FILES["prompt_mean_shift"]),
        **{name: load_prior(d / FILES[name]) for name in ("prior", "prior_seed1", "prior_dpo")},
    )


@dataclass(frozen=True)
class RetrainConfig:
    """Budgets of every stage of the digits testbed."""

    classifier: ClassifierTraining = ClassifierTraining()
    reward: ClassifierTraining = ClassifierTraining(seed=1)
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
    """Train every digits checkpoint from scratch into ``directory``; returns seconds per stage. With ``resume``
    a stage whose checkpoint exists is loaded instead of retrained."""
    torch.manual_seed(config.seed)
    train, test = load_split()
    stages = Stages(directory, FILES, resume)
    classifier = stages.run(
        "classifier",
        lambda: train_classifier(train, config.classifier),
        save_with_config,
        lambda p: load_net(DigitClassifier, ClassifierConfig, p),
    )
    stages.notes["judge (classifier) held-out accuracy"] = (
        f"{accuracy(classifier, test.images, test.labels):.4f} on {len(test)} test digits"
    )
    reward = stages.run(
        "reward",
        lambda: train_classifier(split_half(train, REWARD_SPLIT_SEED), config.reward, lambda: RewardMLP(), desc="reward model"),
        save_with_config,
        lambda p: load_net(RewardMLP, RewardConfig, p),
    )
    stages.notes["reward model held-out accuracy"] = (
        f"{accuracy(reward, test.images, test.labels):.4f} on {len(test)} test digits"
    )
    denoiser = stages.run(
        "denoiser",
        lambda: train_denoiser(train, config.denoiser),
        save_with_config,
        lambda p: load_net(Denoiser, DenoiserConfig, p),
    )
    pixel_prior = stages.run(
        "pixel_prior",
        lambda: train_pixel_prior(train, config.pixel_prior),
        save_with_config,
        lambda p: load_net(PixelPrior, PixelPriorConfig, p),
    )
    stages.run(
        "denoiser_method1",
        lambda: train_consistent_denoiser(train, pixel_prior, config.consistency, config.denoiser),
        save_with_config,
        lambda p: load_net(Denoiser, DenoiserConfig, p),
    )
    work = stages.directory / "_work"
    pairs = work / "pairs"
    held_out = load_held_out(stages.directory) if resume else {}

    def golden_pairs() -> torch.Tensor:
        shutil.rmtree(work, ignore_errors=True)
        counts = collect_golden_pairs(denoiser, reward, pairs, config.golden_pairs_per_class)
        stages.notes["golden pairs"] = (
            f"{counts['written']} kept, {counts['rejected']} rejected by the reward model's filter; "
            f"{HELD_OUT_SEEDS:.0%} of the starting noises held out for validation"
        )
        return prompt_mean_shift(pairs, NUM_CLASSES)

    # timed with the golden-pair collection it comes from
    stages.run("prompt_mean_shift", golden_pairs, save_tensor, load_tensor)
    priors = {}
    for name, seed in PRIORS.items():

        def build(seed: int = seed, name: str = name) -> NoiseAR:
            if not pairs.is_dir():
                raise missing(pairs, "digits")
            prior, held_out[name] = train_prior(
                pairs, work / name, PRIOR_CONFIG, config.prior_steps, seed, config.prior_lr, config.control_variate
            )
            m = held_out[name]
            stages.notes[f"held-out, {FILES[name]} (training seed {seed})"] = (
                f"NLL {m['val_nll']:.5f} nats/dim on {int(m['val_pairs'])} pairs of unseen noises (N(0,I) "
                f"{m['nll_standard_normal']:.5f}, prompt-mean baseline {m['nll_prompt_mean']:.5f}); sample std at "
                f"T=1 {m['sample_std_t1']:.4f} (data {m['data_std']:.4f}); cosine of the mean with the class shift "
                f"{m['mean_shift_cosine']:+.3f}"
            )
            return prior

        priors[name] = stages.run(name, build, save_prior, load_prior)
    dpo_prompts = class_prompts(torch.arange(NUM_CLASSES))
    score = reward_function(denoiser, reward)
    priors["prior_dpo"] = stages.run(
        "prior_dpo",
        lambda: fine_tune_dpo(
            priors["prior"], dpo_prompts, lambda noise, p: score(noise, p.index), work / "dpo", config.dpo_steps, config.seed
        ),
        save_prior,
        load_prior,
    )
    if pairs.is_dir():
        held_out["nll"] = validation_nll(pairs, priors)
    (stages.directory / HELD_OUT_FILE).write_text(json.dumps(held_out, indent=1), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    stages.manifest("Digits testbed checkpoints", config, command)
    return stages.timings


def validation_nll(pairs: Path, priors: dict[str, NoiseAR]) -> dict[str, dict[str, float]]:
    """NLL nats/dim on the validation split (the held-out starting noises) of N(0, I), noisear.train's prompt-mean
    baseline, its full-covariance extension (no autoregression) and the priors."""
    mean, covariance = linear_baselines(pairs)
    batch = Batch.concat(list(ShardDataset(pairs).iterate("validation", 0.0, 4096, HELD_OUT_SEEDS)))
    models = {
        "N(0,I)": standard_normal,
        LINEAR_MEAN: mean.nll_per_dim,
        FULL_COVARIANCE + f" [shrinkage {covariance.shrinkage:g}]": covariance.nll_per_dim,
        **{PRIOR_LABELS[name]: partial(prior_nll, prior) for name, prior in priors.items()},
    }
    return nll_table(nll_values(models, batch), {UNSEEN_NOISES: torch.ones(len(batch), dtype=torch.bool)})


# Evaluation ----------------------------------------------------------------------------------------------------
def items(samples: int) -> PromptSet:
    """The evaluation's items: item i asks for class i mod 10."""
    if samples % NUM_CLASSES:
        raise evaluation.EvaluationError(f"samples must be a multiple of {NUM_CLASSES} (equal count per class), got {samples}")
    return class_prompts(torch.arange(samples) % NUM_CLASSES)


def renderer(denoiser: Denoiser) -> evaluation.Backend:
    """noise [N,1,8,8] -> images [N,1,8,8] in [-1,1] for the items' classes (DDIM, STEPS steps, guidance GUIDANCE)."""
    return lambda noise, prompts: ddim_sample(denoiser, noise, prompts.index, steps=STEPS, guidance=GUIDANCE)


def sources(testbed: demo.Testbed, models: DigitsModels) -> list[evaluation.Source]:
    """Every noise source of the digits testbed, in table order."""

    def golden(prompts: PromptSet, eta: torch.Tensor, seed: int) -> torch.Tensor:
        labels = prompts.index
        return golden_noise(models.denoiser, schedule(STEPS), eta, labels, unconditional(labels), GOLDEN)

    def method2(prompts: PromptSet, eta: torch.Tensor, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(10_000 + seed)
        return ar_blend_noise(models.pixel_prior, prompts.index, eta, METHOD2_ALPHA, generator)

    shift = lambda prompts: models.prompt_mean_shift[prompts.index]  # noqa: E731
    prior, seed1 = models.prior, models.prior_seed1
    rows = [
        (demo.GAUSSIAN, demo.gaussian(), None, False),
        (demo.HALF_GAUSSIAN, demo.gaussian(0.5), None, False),
        *((name, make, None, True) for name, make in demo.prompt_mean_rows(shift)),
        (GOLDEN_ROW, golden, None, True),
        (demo.PRIOR_T1, demo.noisear(prior, 1.0), None, True),
        (demo.PRIOR_T05, demo.noisear(prior, 0.5), None, True),
        (demo.PRIOR_T1 + demo.SEED1, demo.noisear(seed1, 1.0), None, True),
        (f"blend NoiseAR T=1 + Gaussian (VP {demo.BLEND_STRENGTH:g})", demo.blended(demo.noisear(prior, 1.0)), None, True),
        ("Method 1: AR-consistency denoiser", demo.gaussian(), renderer(models.denoiser_method1), True),
        (f"Method 2: AR blend alpha {METHOD2_ALPHA:g}", method2, None, True),
        (demo.DPO_T1, demo.noisear(models.prior_dpo, 1.0), None, True),
    ]
    return [testbed.source(name, make, backend, controlled) for name, make, backend, controlled in rows]


def held_out_pairs(models: DigitsModels, per_class: int = 500) -> Batch:
    """Fresh golden pairs from unseen starting noises (pair_seed(HELD_OUT_FIRST_SEED, class, j), ``per_class`` per
    class, kept where the reward model's score rises, as in training)."""
    with tempfile.TemporaryDirectory() as directory:
        collect_golden_pairs(models.denoiser, models.reward, directory, per_class, first_seed=HELD_OUT_FIRST_SEED)
        return load_pairs(directory)


@torch.no_grad()
def held_out_nll(models: DigitsModels, per_class: int = 500) -> tuple[dict[str, float], int]:
    """NLL (nats/dim) of :func:`held_out_pairs` under N(0, I), the prompt-mean bar N(shift[class], I) and each
    prior (keys: PRIOR_LABELS' values); and the number of pairs."""
    batch = held_out_pairs(models, per_class)
    nll = {
        "N(0,I)": standard_normal_nll_per_dim(batch.noise),
        demo.PROMPT_MEAN: standard_normal_nll_per_dim(batch.noise - models.prompt_mean_shift[batch.prompt_index]),
    }
    nll.update({label: prior_nll(getattr(models, name), batch) for name, label in PRIOR_LABELS.items()})
    return {name: float(values.double().mean()) for name, values in nll.items()}, len(batch)


def held_out_section(models: DigitsModels, checkpoints: Path) -> str:
    """Markdown: the held-out likelihood computed now on fresh pairs, and the figures recorded by --retrain."""
    nll, pairs = held_out_nll(models)
    rows = [[name, f"{value:.5f}", f"{nll['N(0,I)'] - value:+.5f}"] for name, value in nll.items()]
    recorded = load_held_out(checkpoints)
    lines = [
        f"Held-out likelihood, computed now on {pairs} golden pairs of the 10 classes from starting noises never "
        f"trained on (first_seed {HELD_OUT_FIRST_SEED}; training used first_seed 0):",
        "",
        demo.markdown_table(["model", "NLL nats/dim", "gain over N(0,I)"], rows),
        "",
        f"Recorded by --retrain on its validation split (the {HELD_OUT_SEEDS:.0%} of the starting noises never "
        f"trained on), with the baselines that need the training pairs:",
        "",
    ]
    if "nll" in recorded:
        lines += [demo.nll_markdown(recorded["nll"], [UNSEEN_NOISES]), ""]
    lines.append(held_out_table({k: v for k, v in recorded.items() if k in PRIORS}))
    return "\n".join(lines)


def held_out_table(held_out: dict[str, dict[str, float]]) -> str:
    """The priors' held-out figures (recorded by --retrain on pairs whose starting noise was never trained on)."""
    if not held_out:
        return "(no held_out.json next to the checkpoints: run --retrain to record the held-out figures)"
    header = [
        "prior (training seed)",
        "held-out pairs",
        "NLL prior",
        "NLL N(0,I)",
        "NLL prompt-mean baseline",
        "sample std T=1",
        "data std",
        "cosine mean vs shift",
        "cosine prompt-mean baseline vs shift",
    ]
    rows = [
        [
            f"{name} ({PRIORS.get(name, '?')})",
            f"{int(m['val_pairs'])}",
            f"{m['val_nll']:.5f}",
            f"{m['nll_standard_normal']:.5f}",
            f"{m.get('nll_prompt_mean', float('nan')):.5f}",
            f"{m['sample_std_t1']:.4f}",
            f"{m['data_std']:.4f}",
            f"{m.get('mean_shift_cosine', float('nan')):+.3f}",
            f"{m.get('mean_shift_cosine_prompt_mean', float('nan')):+.3f}",
        ]
        for name, m in held_out.items()
    ]
    note = (
        "NLL in nats/dim on golden pairs of every class whose starting noise was held out from training (unseen "
        "noises; the 10 classes are the only prompts, so no prompt is unseen). Prompt-mean baseline: noisear.train's, "
        "a Gaussian whose mean is a ridge regression on the class of golden minus starting noise on the training "
        "pairs. Cosine: the prior's T=0 noise against the class's mean of golden minus starting noise on the held-out "
        "pairs."
    )
    return demo.markdown_table(header, rows) + "\n\n" + note


def grid(result: evaluation.Evaluation, cell: int = 40) -> Image.Image:
    """A labelled row per source (table order), a column per digit: the first seed's first sample of each class."""

    def first_of_each_class(images: torch.Tensor) -> torch.Tensor:
        labels = torch.arange(len(images)) % NUM_CLASSES
        picks = torch.stack([images[labels == k][0] for k in range(NUM_CLASSES)])  # [10,1,8,8] in [-1,1]
        return (picks + 1) / 2

    return evaluation.grid(
        result,
        title=f"seed {result.seeds[0]}: first sample of each requested digit",
        view=first_of_each_class,
        columns=[str(k) for k in range(NUM_CLASSES)],
        cell=cell,
    )


class DigitsTestbed(demo.Testbed):
    name = "digits"
    summary = "NoiseAR end to end on 8x8 digits (the class is the prompt)"
    directory = DEFAULT_DIR
    shape = IMAGE_SHAPE
    samples = 1000
    golden_row = GOLDEN_ROW
    verdict_metrics = ("FD", "coverage", "diversity", "alignment")
    plot_metrics = ("FD", "coverage", "alignment")
    title = "Digits testbed"

    def load(self, directory: Path) -> DigitsModels:
        return load(directory)

    def retrain(self, directory: Path, resume: bool, command: str) -> dict[str, float]:
        return retrain(directory, RetrainConfig(), resume, command)

    def items(self, models: DigitsModels, samples: int) -> PromptSet:
        return items(samples)

    def renderer(self, models: DigitsModels) -> evaluation.Backend:
        return renderer(models.denoiser)

    def scoring(self, models: DigitsModels, items: PromptSet) -> JudgeMetrics:
        _, test = load_split()
        reference = Reference(score_digits(models.classifier, test.images, test.labels).features)
        return JudgeMetrics(
            lambda images, prompts: score_digits(models.classifier, images, prompts.index), reference, DIGITS_METRICS
        )

    def sources(self, models: DigitsModels) -> list[evaluation.Source]:
        return sources(self, models)

    def table_note(self, result: evaluation.Evaluation) -> str:
        return f"{result.items // NUM_CLASSES} samples per class; FD and coverage against the 450 real test digits. "

    def held_out_section(self, models: DigitsModels, directory: Path) -> str:
        return held_out_section(models, directory)

    def grid(self, result: evaluation.Evaluation) -> Image.Image:
        return grid(result)
