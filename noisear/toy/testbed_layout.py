"""The layout testbed (``python -m noisear demo layout``): a digit in one quadrant of a 16x16 canvas, asked for by
a short prompt that may leave the quadrant open ("3", "3 left", "3 top left"; noisear.toy.layout).

What it adds to the digits testbed:

- Prompts are token sequences through the diffusion model's own small text encoder: the prior reads its output,
  text [B, 3, 32] with a mask, as a real prior reads a text encoder's hidden states.
- Prompts held out: the prior never trains on 20 of the 90 prompts (noisear.toy.layout.HELD_OUT_PROMPTS), and
  the table is scored on those (the diffusion model knows every prompt, as a real one would).
- Multimodal golden noise: a golden recipe of 10 DDIM steps at w_l 5.5 and 10 inversion steps back (the paper's
  is one, which here moves the noise by 0.01-0.03 per dimension and holds nothing measurable beyond a mean).
  After 10 steps the model has chosen the quadrant, so golden noise for "3" is a mixture of four layouts.
- The judge: a CNN on the canvas (40 classes: digit x quadrant) for FD and coverage, and a detector with no
  learning (ink per quadrant: how many digits, which quadrant) for the direct check of the prompt and the
  balance of the layouts it leaves open.
- Baselines without autoregression: the same network with its prefix cut (noisear.toy.noisear_prior.cut_prefix),
  noisear.train's prompt-mean Gaussian and its full-covariance extension. The prompt-mean bar's shift is the
  mean of the cut network (the best mean from the prompt alone we have: a linear regression on the pooled prompt
  embedding cannot compose a digit with a position).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ..config import NoiseARConfig
from ..golden import GoldenConfig
from ..io import load as load_prior
from ..io import save as save_prior
from ..model import NoiseAR
from ..train import evaluate as evaluation
from ..train.collect import PromptItem
from ..train.data import Batch, PromptSet, ShardDataset
from ..train.metrics import PromptMeanBaseline
from . import demo
from .checkpoints import (
    HELD_OUT_FILE,
    LAYOUT_DIR,
    LAYOUT_FILES,
    Stages,
    load_held_out,
    load_net,
    load_tensors,
    missing,
    save_tensors,
    save_with_config,
)
from .classifier import ClassifierConfig, ClassifierTraining, DigitClassifier, RewardConfig, RewardMLP, accuracy, train_classifier
from .data import NUM_CLASSES, Digits, load_split, split_half
from .diffusion import DenoiserTraining, PromptDenoiser, PromptDenoiserConfig, ddim_sample, multistep_golden, train_denoiser
from .layout import (
    CANVAS_SHAPE,
    HELD_OUT_PROMPTS,
    NUM_PROMPTS,
    allowed_quadrants,
    canvas_examples,
    place,
    prompt_conditioning,
    prompt_log_prob,
    prompt_parts,
    prompt_text,
    tokens,
)
from .metrics import LAYOUT_METRICS, JudgeMetrics, Reference, score_layout
from .noisear_prior import (
    HELD_OUT_FIRST_SEED,
    HELD_OUT_SEEDS,
    collect_pairs,
    covariance_baseline,
    dataset_info,
    fine_tune_dpo,
    linear_baselines,
    load_pairs,
    nll_table,
    nll_values,
    prior_mean,
    prior_nll,
    prompts_better,
    standard_normal,
    train_prior,
)

PRIOR_CONFIG = NoiseARConfig(
    patch_size=4,
    channels=1,
    latent_height=16,
    latent_width=16,
    d_model=64,
    d_ff=128,
    n_layers=2,
    n_heads=4,
    text_dim=PromptDenoiserConfig().text_dim,
    dropout=0.1,
)
GOLDEN = GoldenConfig(guidance_denoise=5.5, guidance_invert=1.0, margin=0.0)
GOLDEN_STEPS = 10  # of the 25: by then the model has committed to a quadrant
STEPS, GUIDANCE = 25, 1.0
TRAINED_PROMPTS = tuple(p for p in range(NUM_PROMPTS) if p not in HELD_OUT_PROMPTS)
REWARD_SPLIT_SEED = 1
REFERENCE_PER_ITEM = 3  # real canvases per evaluation item for FD and coverage
GOLDEN_ROW = f"golden re-denoise ({GOLDEN_STEPS} steps, w_l {GOLDEN.guidance_denoise:g})"
PAPER_GOLDEN_ROW = f"golden re-denoise (1 step, w_l {GOLDEN.guidance_denoise:g}: the paper's)"
NO_AR_T1 = "NoiseAR without autoregression T=1"
PRIORS = {"prior": 0, "prior_seed1": 1}  # the autoregressive priors: checkpoint -> training seed
PRIOR_LABELS = {
    "prior_no_ar": "NoiseAR without autoregression (same network, prefix cut)",
    "prior": "NoiseAR prior (training seed 0)",
    "prior_seed1": "NoiseAR prior" + demo.SEED1,
    "prior_dpo": "NoiseAR DPO (from training seed 0)",
}
LINEAR_MEAN = "prompt-mean Gaussian (mean linear in the pooled prompt embedding)"
FULL_COVARIANCE = "full-covariance Gaussian (mean and covariance linear in it; no autoregression)"
FULL_COVARIANCE_CUT = "full-covariance Gaussian around the cut network's mean (covariance linear in the prompt embedding)"
SEEN, UNSEEN = "seen prompts", "unseen prompts"


@dataclass
class LayoutModels:
    judge: DigitClassifier
    reward: RewardMLP
    denoiser: PromptDenoiser
    prompt_mean: PromptMeanBaseline  # noisear.train's (linear in the pooled prompt embedding)
    prior_no_ar: NoiseAR
    prior: NoiseAR
    prior_seed1: NoiseAR
    prior_dpo: NoiseAR


@torch.no_grad()
def prompt_set(denoiser: PromptDenoiser, index: torch.Tensor) -> PromptSet:
    """Prompt indices [N] -> a PromptSet whose text is the denoiser's text encoding [N, 3, 32] with its mask."""
    text, mask = denoiser.text_encoder(tokens(index))
    return PromptSet(text, mask, index, tuple(prompt_text(int(i)) for i in index))


def reward_function(denoiser: PromptDenoiser, reward: RewardMLP):
    """(noise [B,1,16,16], prompt indices [B] or [1]) -> the reward model's log-probability [B] that the image that
    noise makes holds the prompt (DDIM, STEPS steps, guidance GUIDANCE)."""

    @torch.no_grad()
    def score(noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        index = index.expand(noise.shape[0])
        images = ddim_sample(denoiser, noise, tokens(index), steps=STEPS, guidance=GUIDANCE)
        return prompt_log_prob(reward(images), index)

    return score


def golden(denoiser: PromptDenoiser, index: torch.Tensor, noise: torch.Tensor, golden_steps: int = GOLDEN_STEPS) -> torch.Tensor:
    """Golden noise of ``noise`` [B,1,16,16] for prompt indices [B] or [1]."""
    return multistep_golden(denoiser, noise, tokens(index), GOLDEN, golden_steps, steps=STEPS)


def collect_golden_pairs(
    denoiser: PromptDenoiser, prompts: Sequence[int], out_dir: str | Path, per_prompt: int, first_seed: int = 0
) -> dict:
    """Golden noise for ``per_prompt`` distinct starting noises of each prompt (no reward filter: after 10 steps
    nearly every pair improves, and the judge stays out of training)."""
    encoded = prompt_set(denoiser, torch.tensor(list(prompts)))
    items = [
        PromptItem(
            index=int(i),
            text=encoded.text[k],
            cond=torch.tensor([int(i)]),
            text_mask=encoded.text_mask[k],
            prompt=encoded.strings[k],
        )
        for k, i in enumerate(encoded.index)
    ]
    info = dataset_info("noisear.toy layout denoiser", GOLDEN, GOLDEN_STEPS)
    return collect_pairs(
        out_dir,
        lambda noise, item, seeds: golden(denoiser, item.cond, noise),
        items,
        per_prompt,
        CANVAS_SHAPE,
        info,
        None,
        first_seed,
        500,
        8192,
    )


def load(directory: Path = LAYOUT_DIR) -> LayoutModels:
    """Every checkpoint of the layout testbed in ``directory``."""
    d = Path(directory)
    for name in ("prior_no_ar", "prior", "prior_seed1", "prior_dpo"):
        if not (d / LAYOUT_FILES[name]).is_file():
            raise missing(d / LAYOUT_FILES[name], "layout")
    return LayoutModels(
        judge=load_net(DigitClassifier, ClassifierConfig, d / LAYOUT_FILES["judge"], "layout"),
        reward=load_net(RewardMLP, RewardConfig, d / LAYOUT_FILES["reward"], "layout"),
        denoiser=load_net(PromptDenoiser, PromptDenoiserConfig, d / LAYOUT_FILES["denoiser"], "layout"),
        prompt_mean=PromptMeanBaseline.from_tensors(load_tensors(d / LAYOUT_FILES["prompt_mean"], "layout")),
        **{name: load_prior(d / LAYOUT_FILES[name]) for name in ("prior_no_ar", "prior", "prior_seed1", "prior_dpo")},
    )


@dataclass(frozen=True)
class RetrainConfig:
    """Budgets of every stage of the layout testbed."""

    judge: ClassifierTraining = ClassifierTraining(steps=2000)
    reward: ClassifierTraining = ClassifierTraining(steps=4000, seed=1)
    denoiser: DenoiserTraining = DenoiserTraining(steps=3000, loss="v")
    pairs_per_prompt: int = 500  # of each trained prompt: a distinct starting noise for every (prompt, j)
    held_out_pairs_per_prompt: int = 100  # of every prompt, from starting noises never trained on
    prior_steps: int = 1000
    prior_lr: float = 2e-3
    control_variate: bool = True
    dpo_steps: int = 100
    seed: int = 0


def retrain(
    directory: Path = LAYOUT_DIR, config: RetrainConfig = RetrainConfig(), resume: bool = False, command: str = ""
) -> dict[str, float]:
    """Train every layout checkpoint from scratch into ``directory``; returns seconds per stage."""
    torch.manual_seed(config.seed)
    train, test = load_split()
    stages = Stages(directory, LAYOUT_FILES, resume)
    test_canvases, test_classes = canvas_examples(test.images, test.labels, torch.Generator().manual_seed(0))
    judge = stages.run(
        "judge",
        lambda: train_classifier(
            train, config.judge, partial(DigitClassifier, ClassifierConfig(16, 4 * NUM_CLASSES)), canvas_examples, "judge"
        ),
        save_with_config,
        lambda p: load_net(DigitClassifier, ClassifierConfig, p),
    )
    stages.notes["judge held-out accuracy"] = (
        f"{accuracy(judge, test_canvases, test_classes):.4f} on {len(test)} test canvases (digit x quadrant)"
    )
    reward = stages.run(
        "reward",
        lambda: train_classifier(
            split_half(train, REWARD_SPLIT_SEED),
            config.reward,
            partial(RewardMLP, RewardConfig(16, 4 * NUM_CLASSES)),
            canvas_examples,
            "reward model",
        ),
        save_with_config,
        lambda p: load_net(RewardMLP, RewardConfig, p),
    )
    stages.notes["reward model held-out accuracy"] = f"{accuracy(reward, test_canvases, test_classes):.4f} on the same canvases"
    denoiser = stages.run(
        "denoiser",
        lambda: train_denoiser(train, config.denoiser, PromptDenoiserConfig(), conditioning=prompt_conditioning),
        save_with_config,
        lambda p: load_net(PromptDenoiser, PromptDenoiserConfig, p),
    )
    work = stages.directory / "_work"
    pairs, held_out_pairs = work / "pairs", work / "held_out_pairs"

    def golden_pairs() -> dict[str, torch.Tensor]:
        shutil.rmtree(work, ignore_errors=True)
        counts = collect_golden_pairs(denoiser, TRAINED_PROMPTS, pairs, config.pairs_per_prompt)
        stages.notes["golden pairs"] = (
            f"{counts['written']} of the {len(TRAINED_PROMPTS)} trained prompts; {HELD_OUT_SEEDS:.0%} of the starting "
            f"noises held out for validation"
        )
        return PromptMeanBaseline(ShardDataset(pairs), 0.0, seed_fraction=HELD_OUT_SEEDS).tensors()

    # timed with the golden-pair collection it comes from
    stages.run("prompt_mean", golden_pairs, save_tensors, lambda p: load_tensors(p, "layout"))
    priors = {}
    held_out = load_held_out(stages.directory) if resume else {}
    for name, seed, autoregressive in (("prior_no_ar", 0, False), ("prior", 0, True), ("prior_seed1", 1, True)):

        def build(seed: int = seed, name: str = name, autoregressive: bool = autoregressive) -> NoiseAR:
            if not pairs.is_dir():
                raise missing(pairs, "layout")
            prior, held_out[name] = train_prior(
                pairs,
                work / name,
                PRIOR_CONFIG,
                config.prior_steps,
                seed,
                config.prior_lr,
                config.control_variate,
                autoregressive,
            )
            return prior

        priors[name] = stages.run(name, build, save_prior, load_prior)
    score = reward_function(denoiser, reward)
    priors["prior_dpo"] = stages.run(
        "prior_dpo",
        lambda: fine_tune_dpo(
            priors["prior"],
            prompt_set(denoiser, torch.tensor(TRAINED_PROMPTS)),
            lambda noise, p: score(noise, p.index),
            work / "dpo",
            config.dpo_steps,
            config.seed,
        ),
        save_prior,
        load_prior,
    )
    if pairs.is_dir():  # the baselines that need the training pairs
        collect_golden_pairs(denoiser, range(NUM_PROMPTS), held_out_pairs, config.held_out_pairs_per_prompt, HELD_OUT_FIRST_SEED)
        held_out["nll"] = held_out_nll_recorded(pairs, held_out_pairs, priors)
        stages.notes["held-out pairs"] = (
            f"{config.held_out_pairs_per_prompt} per prompt from starting noises never trained on (first_seed "
            f"{HELD_OUT_FIRST_SEED}), all {NUM_PROMPTS} prompts"
        )
    (stages.directory / HELD_OUT_FILE).write_text(json.dumps(held_out, indent=1), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    stages.manifest("Layout testbed checkpoints", config, command)
    return stages.timings


# Held-out likelihood -------------------------------------------------------------------------------------------
PER_PROMPT_MEAN = "per-prompt mean N(mu_p, I) (seen prompts only: fitted on each prompt's training pairs)"
PER_PROMPT_MIXTURE = "per-prompt mixture of 4 Gaussians N(mu_k, I) (seen prompts only; EM on each prompt's training pairs)"
MIXTURE_COMPONENTS, EM_ITERATIONS = 4, 50


def mixture_fit(x: torch.Tensor, components: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """EM for a mixture of unit-variance Gaussians on x [N, d] (float64): (weights [K], means [K, d])."""
    generator = torch.Generator().manual_seed(seed)
    means = x[torch.randperm(len(x), generator=generator)[:components]].clone()
    weights = torch.full((components,), 1.0 / components, dtype=torch.float64)
    for _ in range(EM_ITERATIONS):
        log_r = weights.log() - 0.5 * torch.cdist(x, means).square()
        r = (log_r - log_r.logsumexp(1, keepdim=True)).exp()
        weights = r.mean(0).clamp_min(1e-6)
        means = (r.T @ x) / r.sum(0)[:, None].clamp_min(1e-9)
    return weights, means


def mixture_nll_per_dim(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """[N] nats per dimension of x [N, d] under sum_k w_k N(means_k, I)."""
    d = x.shape[1]
    log_p = (weights.log() - 0.5 * torch.cdist(x, means).square()).logsumexp(1) - 0.5 * d * math.log(2 * math.pi)
    return -log_p / d


def per_prompt_models(pairs: Path) -> tuple:
    """Per seen prompt, fitted on its training pairs (held-out seeds excluded): the mean and the EM mixture."""
    train = Batch.concat(list(ShardDataset(pairs).iterate("train", 0.0, 8192, HELD_OUT_SEEDS)))
    means, mixtures = {}, {}
    for prompt in train.prompt_index.unique().tolist():
        x = train.noise[train.prompt_index == prompt].flatten(1).double()
        means[prompt] = x.mean(0)
        mixtures[prompt] = mixture_fit(x, MIXTURE_COMPONENTS, seed=prompt)

    def per_prompt(batch: Batch, nll) -> torch.Tensor:
        values = torch.full((len(batch),), float("nan"), dtype=torch.float64)
        for prompt in batch.prompt_index.unique().tolist():
            if prompt in means:
                rows = batch.prompt_index == prompt
                values[rows] = nll(batch.noise[rows].flatten(1).double(), prompt)
        return values

    mean_nll = partial(per_prompt, nll=lambda x, p: 0.5 * (x - means[p]).square().mean(1) + 0.5 * math.log(2 * math.pi))
    mixture_nll = partial(per_prompt, nll=lambda x, p: mixture_nll_per_dim(x, *mixtures[p]))
    return mean_nll, mixture_nll


OPEN = (4, 2, 1)  # how many quadrants a prompt leaves open: "3", "3 left", "3 top left"


def groups(batch: Batch) -> dict[str, torch.Tensor]:
    """Rows of seen and of unseen prompts, and of each by how many quadrants the prompt leaves open."""
    unseen = torch.tensor([int(p) in HELD_OUT_PROMPTS for p in batch.prompt_index])
    open_quadrants = allowed_quadrants(batch.prompt_index).sum(1)
    kinds = {
        f"{name}, {k} open": rows & (open_quadrants == k) for name, rows in ((SEEN, ~unseen), (UNSEEN, unseen)) for k in OPEN
    }
    return {SEEN: ~unseen, UNSEEN: unseen, **kinds}


KINDS = [f"{name}, {k} open" for name in (SEEN, UNSEEN) for k in OPEN]


def held_out_nll_recorded(pairs: Path, held_out_pairs: Path, priors: dict[str, NoiseAR]) -> dict:
    """--retrain's held-out NLL (nats/dim) on golden pairs from unseen starting noises, of seen and of unseen
    prompts, under N(0, I), the baselines without autoregression, the per-prompt structure probes and the priors."""
    batch = load_pairs(held_out_pairs)
    mean, covariance = linear_baselines(pairs)
    around_cut = covariance_baseline(pairs, prior_mean(priors["prior_no_ar"], CANVAS_SHAPE))
    mean_nll, mixture_nll = per_prompt_models(pairs)
    models = {
        "N(0,I)": standard_normal,
        LINEAR_MEAN: mean.nll_per_dim,
        FULL_COVARIANCE + f" [shrinkage {covariance.shrinkage:g}]": covariance.nll_per_dim,
        FULL_COVARIANCE_CUT + f" [shrinkage {around_cut.shrinkage:g}]": around_cut.nll_per_dim,
        PER_PROMPT_MEAN: mean_nll,
        PER_PROMPT_MIXTURE: mixture_nll,
        **{PRIOR_LABELS[name]: partial(prior_nll, prior) for name, prior in priors.items()},
    }
    values = nll_values(models, batch)
    return {"table": nll_table(values, groups(batch)), "prompts_better": prompt_signs(values, batch)}


OPEN_UNSEEN = "unseen prompts that leave the quadrant open"
SIGN_GROUPS = (SEEN, UNSEEN, OPEN_UNSEEN)
CONTRASTS = [  # (prior, baseline) pairs whose per-prompt signs the held-out section reports
    (PRIOR_LABELS[prior], baseline) for prior in PRIORS for baseline in (PRIOR_LABELS["prior_no_ar"], LINEAR_MEAN)
]


def prompt_signs(values: dict[str, torch.Tensor], batch: Batch) -> dict[str, dict[str, str]]:
    """For each of CONTRASTS and group: on how many prompts the prior's mean NLL is below the baseline's ("k/n")."""
    rows = groups(batch)
    rows[OPEN_UNSEEN] = rows[f"{UNSEEN}, 4 open"] | rows[f"{UNSEEN}, 2 open"]
    return {
        f"{a} vs {b}": {group: "{}/{}".format(*prompts_better(values, batch, a, b, rows[group])) for group in SIGN_GROUPS}
        for a, b in CONTRASTS
    }


@torch.no_grad()
def held_out_nll(models: LayoutModels, per_prompt: int = 20) -> tuple[dict, int]:
    """NLL computed now on fresh golden pairs of every prompt from unseen starting noises
    (pair_seed(HELD_OUT_FIRST_SEED, prompt, j), j < ``per_prompt``), by seen and unseen prompts: {"table": mean
    NLL per model and group, "prompts_better": per-prompt signs of CONTRASTS}; and the number of pairs."""
    with tempfile.TemporaryDirectory() as directory:
        collect_golden_pairs(models.denoiser, range(NUM_PROMPTS), directory, per_prompt, HELD_OUT_FIRST_SEED)
        batch = load_pairs(directory)
    nll = {"N(0,I)": standard_normal, LINEAR_MEAN: models.prompt_mean.nll_per_dim}
    nll.update({label: partial(prior_nll, getattr(models, name)) for name, label in PRIOR_LABELS.items()})
    values = nll_values(nll, batch)
    return {"table": nll_table(values, groups(batch)), "prompts_better": prompt_signs(values, batch)}, len(batch)


def held_out_section(models: LayoutModels, checkpoints: Path) -> str:
    """Markdown: the held-out likelihood computed now, and --retrain's with the baselines that need the pairs."""
    nll, pairs = held_out_nll(models)
    recorded = load_held_out(checkpoints).get("nll")
    lines = [
        f"Held-out likelihood, computed now on {pairs} golden pairs from starting noises never trained on (first_seed "
        f"{HELD_OUT_FIRST_SEED}; training used first_seed 0), of the {len(TRAINED_PROMPTS)} seen and the "
        f"{len(HELD_OUT_PROMPTS)} unseen prompts (gain: over N(0,I), > 0 is better):",
        "",
        demo.nll_markdown(nll["table"], [SEEN, UNSEEN]),
        "",
        'The gain over N(0,I) by how many quadrants the prompt leaves open (4: "3", 2: "3 left", 1: "3 top left"):',
        "",
        demo.nll_markdown(nll["table"], KINDS, gains_only=True),
        "",
        signs_markdown(nll["prompts_better"]),
        "",
    ]
    if recorded:
        lines += [
            "Recorded by --retrain on 100 such pairs per prompt, with the baselines that need the training pairs "
            "(the per-prompt probes measure how much structure golden noise holds beyond its mean):",
            "",
            demo.nll_markdown(recorded["table"], [SEEN, UNSEEN]),
            "",
            demo.nll_markdown(recorded["table"], KINDS, gains_only=True),
            "",
            signs_markdown(recorded["prompts_better"]),
        ]
    else:
        lines.append("(no held_out.json next to the checkpoints: run --retrain to record the baselines' figures)")
    return "\n".join(lines)


def signs_markdown(signs: dict[str, dict[str, str]]) -> str:
    """Per-prompt signs: on how many prompts the first model's NLL is below the second's."""
    rows = [[contrast, *(values.get(group, "—") for group in SIGN_GROUPS)] for contrast, values in signs.items()]
    return demo.markdown_table(["lower NLL on how many prompts", *SIGN_GROUPS], rows)


# Evaluation ----------------------------------------------------------------------------------------------------
def items(models: LayoutModels, samples: int) -> PromptSet:
    """The evaluation's items: item i asks for the i mod 20-th unseen prompt (held out from the priors' training)."""
    if samples % len(HELD_OUT_PROMPTS):
        raise evaluation.EvaluationError(
            f"samples must be a multiple of {len(HELD_OUT_PROMPTS)} (equal count per unseen prompt), got {samples}"
        )
    return prompt_set(models.denoiser, torch.tensor(HELD_OUT_PROMPTS)[torch.arange(samples) % len(HELD_OUT_PROMPTS)])


def reference_canvases(prompts: torch.Tensor, per_item: int = REFERENCE_PER_ITEM, seed: int = 0) -> torch.Tensor:
    """Real canvases for prompt indices [N]: ``per_item`` each, a test digit of the requested class in a quadrant
    the prompt allows, both drawn uniformly (seeded): [N * per_item, 1, 16, 16]."""
    _, test = load_split()
    generator = torch.Generator().manual_seed(seed)
    prompts = prompts.repeat(per_item)
    digit = prompt_parts(prompts)[0]
    allowed = allowed_quadrants(prompts).float()
    quadrant = torch.multinomial(allowed, 1, generator=generator)[:, 0]
    picks = torch.stack(
        [
            (test.labels == d).nonzero()[torch.randint(0, int((test.labels == d).sum()), (1,), generator=generator), 0][0]
            for d in digit
        ]
    )
    return place(Digits(test.images[picks], test.labels[picks]).images, quadrant)


def sources(testbed: demo.Testbed, models: LayoutModels) -> list[evaluation.Source]:
    """Every noise source of the layout testbed, in table order."""
    no_ar = models.prior_no_ar
    no_ar_mean = prior_mean(no_ar, CANVAS_SHAPE)

    def shift(prompts: PromptSet) -> torch.Tensor:
        return no_ar_mean(prompts.text, prompts.text_mask)

    def golden_source(golden_steps: int) -> demo.MakeNoise:
        return lambda prompts, eta, seed: golden(models.denoiser, prompts.index, eta, golden_steps)

    prior, seed1 = models.prior, models.prior_seed1
    rows = [
        (demo.GAUSSIAN, demo.gaussian(), False),
        (demo.HALF_GAUSSIAN, demo.gaussian(0.5), False),
        *((name, make, True) for name, make in demo.prompt_mean_rows(shift)),
        (NO_AR_T1, demo.noisear(no_ar, 1.0), True),
        (GOLDEN_ROW, golden_source(GOLDEN_STEPS), True),
        (PAPER_GOLDEN_ROW, golden_source(1), True),
        (demo.PRIOR_T1, demo.noisear(prior, 1.0), True),
        (demo.PRIOR_T05, demo.noisear(prior, 0.5), True),
        (demo.PRIOR_T1 + demo.SEED1, demo.noisear(seed1, 1.0), True),
        (demo.PRIOR_T05 + demo.SEED1, demo.noisear(seed1, 0.5), True),
        (demo.DPO_T1, demo.noisear(models.prior_dpo, 1.0), True),
    ]
    return [testbed.source(name, make, controlled=controlled) for name, make, controlled in rows]


def grid(result: evaluation.Evaluation, cell: int = 64) -> Image.Image:
    """A labelled row per source (table order), a column per unseen prompt: the first seed's first sample of each."""
    count = len(HELD_OUT_PROMPTS)
    return evaluation.grid(
        result,
        title=f"seed {result.seeds[0]}: first sample of each unseen prompt",
        view=lambda images: (images[:count] + 1) / 2,
        columns=[prompt_text(p) for p in HELD_OUT_PROMPTS],
        cell=cell,
    )


class LayoutTestbed(demo.Testbed):
    name = "layout"
    summary = "a digit in a quadrant of a 16x16 canvas, token prompts that may leave the quadrant open, unseen prompts"
    directory = LAYOUT_DIR
    shape = CANVAS_SHAPE
    samples = 600
    golden_row = GOLDEN_ROW
    verdict_metrics = ("FD", "coverage", "satisfied", "balance")
    plot_metrics = ("FD", "coverage", "satisfied", "balance")
    title = "Layout testbed (unseen prompts)"

    def load(self, directory: Path) -> LayoutModels:
        return load(directory)

    def retrain(self, directory: Path, resume: bool, command: str) -> dict[str, float]:
        return retrain(directory, RetrainConfig(), resume, command)

    def items(self, models: LayoutModels, samples: int) -> PromptSet:
        return items(models, samples)

    def renderer(self, models: LayoutModels) -> evaluation.Backend:
        return lambda noise, prompts: ddim_sample(models.denoiser, noise, tokens(prompts.index), steps=STEPS, guidance=GUIDANCE)

    def scoring(self, models: LayoutModels, items: PromptSet) -> JudgeMetrics:
        reference = Reference(models.judge.features(reference_canvases(items.index)).detach())
        return JudgeMetrics(lambda images, prompts: score_layout(models.judge, images, prompts.index), reference, LAYOUT_METRICS)

    def sources(self, models: LayoutModels) -> list[evaluation.Source]:
        return sources(self, models)

    def table_note(self, result: evaluation.Evaluation) -> str:
        return (
            f"Items: the {len(HELD_OUT_PROMPTS)} prompts no prior trained on, {result.items // len(HELD_OUT_PROMPTS)} "
            f"each; FD and coverage in the judge's features against {REFERENCE_PER_ITEM} real canvases per item. "
        )

    def extra_contrasts(self, names: set[str]) -> list[tuple[str, str]]:
        return [(prior, NO_AR_T1) for prior in (demo.PRIOR_T1, demo.PRIOR_T1 + demo.SEED1)] + [(GOLDEN_ROW, PAPER_GOLDEN_ROW)]

    def held_out_section(self, models: LayoutModels, directory: Path) -> str:
        return held_out_section(models, directory)

    def grid(self, result: evaluation.Evaluation) -> Image.Image:
        return grid(result)
