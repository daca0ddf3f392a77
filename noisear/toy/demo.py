"""The demo: an evaluation (noisear.train.evaluate) of every noise source on the toy, rendered by the toy's
diffusion model and scored by its classifier (noisear.toy.metrics). Besides the evaluation's table (mean ± std
over seeds, paired permutation test and per-seed signs against the Gaussian of matched std), labelled grid
(rows: noise source, columns: classes) and plot of FD and alignment, it reports the headline contrasts (the
learned priors against the two bars: Gaussian + prompt-mean shift and golden re-denoise) and the priors'
held-out likelihood.

Item i of seed s asks for class i mod 10 and starts from the Gaussian draw eta_i of that seed; every
source transforms that same eta (NoiseAR uses it as its eps), so sources are compared item by item.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from ..golden import golden_noise
from ..mixing import blend
from ..train import evaluate as evaluation
from ..train.data import Batch, PromptSet, ShardDataset
from ..train.metrics import nll_per_dim, standard_normal_nll_per_dim
from .blog_methods import ar_blend_noise
from .checkpoints import PRIORS, ToyModels, load_held_out, load_models
from .data import IMAGE_SHAPE, NUM_CLASSES, load_split
from .diffusion import Denoiser, ddim_sample, schedule, unconditional
from .metrics import LOWER_IS_BETTER, METRICS, ClassifierMetrics, Reference, score
from .noisear_prior import GOLDEN, GUIDANCE, HELD_OUT_SEEDS, STEPS, class_text, collect_golden_pairs

METHOD2_ALPHA = 0.2
BLEND_STRENGTH = 0.5
PROMPT_MEAN = "Gaussian + prompt-mean shift"
GOLDEN_ROW = f"golden re-denoise (w_l {GOLDEN.guidance_denoise:g})"
SEED1 = f" (training seed {PRIORS['prior_seed1']})"

# (labels [N], eta [N,1,8,8], seed) -> initial noise [N,1,8,8]
MakeNoise = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def items(samples: int) -> PromptSet:
    """The evaluation's items: item i asks for class i mod 10 (its one-hot text; index = the class)."""
    if samples % NUM_CLASSES:
        raise evaluation.EvaluationError(f"samples must be a multiple of {NUM_CLASSES} (equal count per class), got {samples}")
    labels = torch.arange(samples) % NUM_CLASSES
    return PromptSet(class_text(labels), torch.ones(samples, 1, dtype=torch.bool), labels)


def draw(seed: int, samples: int) -> torch.Tensor:
    """eta [N,1,8,8]: standard normal from a generator seeded with ``seed``, one draw per item."""
    return torch.randn((samples, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(seed))


def renderer(denoiser: Denoiser) -> evaluation.Backend:
    """The evaluation's backend: noise [N,1,8,8] -> images [N,1,8,8] in [-1,1] for the items' classes (DDIM,
    STEPS steps, guidance GUIDANCE)."""
    return lambda noise, prompts: ddim_sample(denoiser, noise, prompts.index, steps=STEPS, guidance=GUIDANCE)


def sources(models: ToyModels) -> list[evaluation.Source]:
    """Every noise source of the demo, in table order."""

    def source(name: str, make: MakeNoise, denoiser: Denoiser | None = None, controlled: bool = True) -> evaluation.Source:
        return evaluation.Source(
            name,
            lambda prompts, seed: make(prompts.index, draw(seed, len(prompts)), seed),
            backend=renderer(denoiser) if denoiser is not None else None,
            controlled=controlled,
        )

    def noisear(prior: torch.nn.Module, temperature: float) -> MakeNoise:
        return lambda labels, eta, seed: prior.sample(class_text(labels), eta, temperature=temperature)

    def blended(inner: MakeNoise) -> MakeNoise:
        """Variance-preserving blend with a second, independent Gaussian draw. (Blending with eta itself, which
        is also the prior's eps, would add correlated noise: std 1.38 instead of 1 at strength 0.5.)"""

        def make(labels: torch.Tensor, eta: torch.Tensor, seed: int) -> torch.Tensor:
            other = torch.randn(eta.shape, generator=torch.Generator().manual_seed(20_000 + seed))
            return blend(inner(labels, eta, seed), other, BLEND_STRENGTH, mode="variance-preserving")

        return make

    def golden(labels: torch.Tensor, eta: torch.Tensor, seed: int) -> torch.Tensor:
        return golden_noise(models.denoiser, schedule(STEPS), eta, labels, unconditional(labels), GOLDEN)

    def method2(labels: torch.Tensor, eta: torch.Tensor, seed: int) -> torch.Tensor:
        return ar_blend_noise(models.pixel_prior, labels, eta, METHOD2_ALPHA, torch.Generator().manual_seed(10_000 + seed))

    def shifted(scale: float) -> MakeNoise:
        """scale * eta + the per-class mean of golden minus starting noise: the prompt-mean bar (no AR model)."""
        return lambda labels, eta, seed: scale * eta + models.prompt_mean_shift[labels]

    prior, seed1, dpo = models.prior, models.prior_seed1, models.prior_dpo
    return [
        source("Gaussian", lambda labels, eta, seed: eta, controlled=False),
        source("Gaussian x0.5", lambda labels, eta, seed: 0.5 * eta, controlled=False),
        source(PROMPT_MEAN, shifted(1.0)),
        source("Gaussian x0.5 + prompt-mean shift", shifted(0.5)),
        source(GOLDEN_ROW, golden),
        source("NoiseAR T=1", noisear(prior, 1.0)),
        source("NoiseAR T=0.5", noisear(prior, 0.5)),
        source("NoiseAR T=1" + SEED1, noisear(seed1, 1.0)),
        source("NoiseAR T=0.5" + SEED1, noisear(seed1, 0.5)),
        source(f"blend NoiseAR T=1 + Gaussian (VP {BLEND_STRENGTH:g})", blended(noisear(prior, 1.0))),
        source(f"blend NoiseAR T=0.5 + Gaussian (VP {BLEND_STRENGTH:g})", blended(noisear(prior, 0.5))),
        source("Method 1: AR-consistency denoiser", lambda labels, eta, seed: eta, denoiser=models.denoiser_method1),
        source(f"Method 2: AR blend alpha {METHOD2_ALPHA:g}", method2),
        source("NoiseAR DPO T=1", noisear(dpo, 1.0)),
        source("NoiseAR DPO T=0.5", noisear(dpo, 0.5)),
    ]


def evaluate(
    models: ToyModels,
    seeds: Sequence[int],
    samples: int,
    permutations: int,
    names: Sequence[str] | None = None,
    controls: bool = True,
) -> evaluation.Evaluation:
    """Every source (or those in ``names``) on ``samples`` items per seed, each against the Gaussian of its std
    (eta scaled to the source's std, same draws, measured per seed), with ``permutations`` swaps per test."""
    _, test = load_split()
    scoring = ClassifierMetrics(models.classifier, Reference(score(models.classifier, test.images, test.labels).features))
    chosen = [source for source in sources(models) if names is None or source.name in names]
    return evaluation.evaluate(
        chosen,
        renderer(models.denoiser),
        scoring,
        items(samples),
        seeds,
        baseline="Gaussian",
        permutations=permutations,
        controls=controls,
        std_per_seed=True,
        progress="demo sources",
    )


def table(result: evaluation.Evaluation) -> str:
    """Markdown table: one row per source; its matched-std Gaussian control, the paired tests and on how many
    seeds the source's FD is below its control's."""
    better = ", ".join(f"{m} {'lower' if m in LOWER_IS_BETTER else 'higher'}" for m in METRICS)
    note = (
        f"{len(result.seeds)} seeds ({', '.join(map(str, result.seeds))}) x {result.items} samples "
        f"({result.items // NUM_CLASSES} per class), DDIM {STEPS} steps, guidance {GUIDANCE:g}. "
        f"Better: {better}. Mean ± std over seeds. Δ = source minus the Gaussian noise scaled to the "
        f"source's std (same draws); p: two-sided paired permutation test swapping the two images of "
        f"each item ({result.permutations} permutations), which treats the trained networks and the "
        f"draws as fixed; the seed counts show how often the sign holds on fresh draws."
    )
    return evaluation.table(result, digits=3, headline=("FD",), note=note)


def _line(label: str, test: dict, seeds: int, metric: str = "FD") -> str:
    p = f", p {test['p_value']:.3f}" if "p_value" in test else ""
    per_seed = " ".join(f"{d:+.2f}" for d in test["per_seed"])
    return f"- {label}: Δ{metric} {test['diff']:+.3f}{p}; better on {test['better']}/{seeds} seeds ({per_seed})"


def contrasts(result: evaluation.Evaluation) -> str:
    """The headline contrasts on FD with per-seed signs: each source against its matched Gaussian; the learned
    priors' share of the prompt-mean bar's gain; their gaps to both bars (Gaussian + prompt-mean shift, golden
    re-denoise); DPO against its starting prior."""
    names = {r.name for r in result.rows}
    seeds = len(result.seeds)
    lines = ["Each source against the Gaussian of its own std (ΔFD < 0: the source is better):"]
    for row in result.rows:
        if row.control is not None:
            lines.append(_line(row.name, result.vs_matched(row.name, "FD"), seeds))
    priors = [name for name in ("NoiseAR T=1", "NoiseAR T=1" + SEED1, "NoiseAR DPO T=1") if name in names]
    if PROMPT_MEAN in names and result.row(PROMPT_MEAN).control is not None:
        bar = result.vs_matched(PROMPT_MEAN, "FD")["diff"]
        lines += ["", f"Share of the prompt-mean bar's gain over its matched Gaussian that the prior gets (bar: {bar:+.3f} FD):"]
        for name in priors:
            if result.row(name).control is not None:
                lines.append(f"- {name}: {result.vs_matched(name, 'FD')['diff'] / bar:.0%}")
    lines += ["", "Gaps to the bars (ΔFD > 0: the prior is behind):"]
    bars = [(PROMPT_MEAN, "NoiseAR T=1"), (GOLDEN_ROW, "NoiseAR T=1"), ("Gaussian x0.5 + prompt-mean shift", "NoiseAR T=0.5")]
    for bar_name, prior in bars:
        for name in (prior, prior + SEED1):
            if bar_name in names and name in names:
                lines.append(_line(f"{name} − {bar_name}", result.contrast(name, bar_name, "FD"), seeds))
    dpo = [
        (name, bar)
        for name, bar in (("NoiseAR DPO T=1", "NoiseAR T=1"), ("NoiseAR DPO T=1", GOLDEN_ROW))
        if name in names and bar in names
    ]
    if dpo:
        lines += ["", "DPO (its reward is the classifier that also scores this table):"]
        lines += [_line(f"{name} − {bar}", result.contrast(name, bar, "FD"), seeds) for name, bar in dpo]
    return "\n".join(lines)


HELD_OUT_FIRST_SEED = 1  # training pairs come from pair_seed(0, class, j): these starting noises are unseen


PRIOR_LABELS = {
    "prior": "NoiseAR prior (training seed 0)",
    "prior_seed1": "NoiseAR prior" + SEED1,
    "prior_dpo": "NoiseAR DPO (from training seed 0)",
}


@torch.no_grad()
def held_out_nll(models: ToyModels, per_class: int = 500) -> tuple[dict[str, float], int]:
    """NLL (nats/dim) of fresh golden pairs from unseen starting noises (pair_seed(HELD_OUT_FIRST_SEED, class, j),
    ``per_class`` per class, kept where the reward rises, as in training) under N(0, I), the prompt-mean bar
    N(shift[class], I) and each prior (keys: PRIOR_LABELS' values); and the number of pairs."""
    with tempfile.TemporaryDirectory() as directory:
        collect_golden_pairs(models.denoiser, models.classifier, directory, per_class, first_seed=HELD_OUT_FIRST_SEED)
        batch = Batch.concat(list(ShardDataset(directory).iterate(batch_size=NUM_CLASSES * per_class)))
    dims = batch.noise[0].numel()
    nll = {
        "N(0,I)": standard_normal_nll_per_dim(batch.noise),
        PROMPT_MEAN: standard_normal_nll_per_dim(batch.noise - models.prompt_mean_shift[batch.prompt_index]),
    }
    for name, label in PRIOR_LABELS.items():
        nll[label] = nll_per_dim(getattr(models, name).log_prob(batch.text, batch.noise), dims)
    return {name: float(values.double().mean()) for name, values in nll.items()}, len(batch)


def held_out_section(models: ToyModels, checkpoints: Path) -> str:
    """Markdown: the held-out likelihood computed now on fresh pairs, and the figures recorded by --retrain."""
    nll, pairs = held_out_nll(models)
    rows = "\n".join(f"| {name} | {value:.5f} | {nll['N(0,I)'] - value:+.5f} |" for name, value in nll.items())
    return (
        f"Held-out likelihood, computed now on {pairs} golden pairs of the 10 classes from starting noises never "
        f"trained on (first_seed {HELD_OUT_FIRST_SEED}; training used first_seed 0):\n\n"
        f"| model | NLL nats/dim | gain over N(0,I) |\n|---|---|---|\n{rows}\n\n"
        f"Held-out figures recorded by --retrain (its validation split: the {HELD_OUT_SEEDS:.0%} of the starting "
        f"noises never trained on):\n\n{held_out_table(load_held_out(checkpoints))}"
    )


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
        "gap vs N(0,I)",
        "gap vs prompt-mean",
        "sample std T=1",
        "data std",
        "cosine mean vs shift",
        "cosine prompt-mean baseline vs shift",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in held_out.items():
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{name} ({PRIORS.get(name, '?')})",
                    f"{int(m['val_pairs'])}",
                    f"{m['val_nll']:.5f}",
                    f"{m['nll_standard_normal']:.5f}",
                    f"{m.get('nll_prompt_mean', float('nan')):.5f}",
                    f"{m['gap_vs_standard_normal']:+.5f}",
                    f"{m.get('gap_vs_prompt_mean', float('nan')):+.5f}",
                    f"{m['sample_std_t1']:.4f}",
                    f"{m['data_std']:.4f}",
                    f"{m.get('mean_shift_cosine', float('nan')):+.3f}",
                    f"{m.get('mean_shift_cosine_prompt_mean', float('nan')):+.3f}",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "NLL in nats/dim on golden pairs of every class whose starting noise was held out from training "
        "(unseen noises; the 10 classes are the only prompts, so no prompt is unseen). Gap = baseline "
        "minus prior (> 0: the prior is better). Prompt-mean baseline: noisear.train's, a Gaussian whose "
        "mean is a ridge regression on the class of golden minus starting noise on the training pairs. "
        "Cosine: the prior's T=0 noise against the class's mean of golden minus starting noise on the "
        "held-out pairs.",
    ]
    return "\n".join(lines)


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


PLOT_METRICS = ("FD", "alignment")
DEFAULT_SEEDS = tuple(range(1, 11))


def run(
    checkpoints: Path, out: Path, seeds: Sequence[int] = DEFAULT_SEEDS, samples: int = 1000, permutations: int = 100
) -> dict[str, Path]:
    """Evaluate with the checkpoints of ``checkpoints`` and write out/table.md, out/grid.png and out/plot.png
    (the plot only with matplotlib; without it the table says it was skipped)."""
    torch.manual_seed(0)
    models = load_models(checkpoints)
    result = evaluate(models, seeds, samples, permutations)
    return evaluation.write_report(
        result,
        out,
        "table.md",
        [table(result), contrasts(result), held_out_section(models, checkpoints)],
        grid(result),
        plot_metrics=PLOT_METRICS,
        plot_title="Toy demo: each source vs the Gaussian scaled to its std",
        plot_note=f"mean ± std over {len(result.seeds)} seeds x {result.items} samples",
    )
