"""The demo's evaluation: every noise source on the same labels and draws, scored by the classifier;
a markdown table (mean +- std over seeds, paired permutation test and per-seed signs against the
Gaussian of matched std), the headline contrasts (each source against its matched Gaussian, the
learned priors against the two bars: Gaussian + prompt-mean shift and golden re-denoise), the priors'
held-out likelihood, a labelled image grid (rows: noise source, columns: classes) and a plot of FD and
alignment of each source against its matched-std Gaussian (noisear.figures).

Item i of seed s asks for class i mod 10 and starts from the Gaussian draw eta_i of that seed; every
source transforms that same eta (NoiseAR uses it as its eps), so sources are compared item by item.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from ..figures import PLOT_SKIPPED, Comparison, comparison_plot, labelled_grid
from ..golden import golden_noise
from ..mixing import blend
from ..train.data import Batch, ShardDataset
from ..train.metrics import nll_per_dim, standard_normal_nll_per_dim
from .blog_methods import ar_blend_noise
from .checkpoints import PRIORS, ToyModels, load_held_out, load_models
from .data import IMAGE_SHAPE, NUM_CLASSES, load_split
from .diffusion import ddim_sample, schedule, unconditional
from .metrics import LOWER_IS_BETTER, METRICS, Reference, Scored, score, swap_test
from .noisear_prior import GOLDEN, GUIDANCE, HELD_OUT_SEEDS, STEPS, class_text, collect_golden_pairs

METHOD2_ALPHA = 0.2
BLEND_STRENGTH = 0.5

# (models, labels [N], eta [N,1,8,8], seed) -> initial noise [N,1,8,8]
MakeNoise = Callable[[ToyModels, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Source:
    name: str
    make: MakeNoise
    denoiser: str = "denoiser"  # the ToyModels attribute that renders it
    controlled: bool = True  # compared with the Gaussian of matched std


def _noisear(attribute: str, temperature: float) -> MakeNoise:
    def make(m: ToyModels, labels: torch.Tensor, eta: torch.Tensor, seed: int) -> torch.Tensor:
        return getattr(m, attribute).sample(class_text(labels), eta, temperature=temperature)

    return make


def _blended(inner: MakeNoise) -> MakeNoise:
    """Variance-preserving blend with a second, independent Gaussian draw. (Blending with eta itself, which
    is also the prior's eps, would add correlated noise: std 1.38 instead of 1 at strength 0.5.)"""

    def make(m: ToyModels, labels: torch.Tensor, eta: torch.Tensor, seed: int) -> torch.Tensor:
        other = torch.randn(eta.shape, generator=torch.Generator().manual_seed(20_000 + seed))
        return blend(inner(m, labels, eta, seed), other, BLEND_STRENGTH, mode="variance-preserving")

    return make


def _golden(m: ToyModels, labels: torch.Tensor, eta: torch.Tensor, seed: int) -> torch.Tensor:
    return golden_noise(m.denoiser, schedule(STEPS), eta, labels, unconditional(labels), GOLDEN)


def _method2(m: ToyModels, labels: torch.Tensor, eta: torch.Tensor, seed: int) -> torch.Tensor:
    return ar_blend_noise(m.pixel_prior, labels, eta, METHOD2_ALPHA, torch.Generator().manual_seed(10_000 + seed))


def _shifted(scale: float) -> MakeNoise:
    """scale * eta + the per-class mean of golden minus starting noise: the prompt-mean bar (no AR model)."""

    def make(m: ToyModels, labels: torch.Tensor, eta: torch.Tensor, seed: int) -> torch.Tensor:
        return scale * eta + m.prompt_mean_shift[labels]

    return make


PROMPT_MEAN = "Gaussian + prompt-mean shift"
GOLDEN_ROW = f"golden re-denoise (w_l {GOLDEN.guidance_denoise:g})"
SEED1 = f" (training seed {PRIORS['prior_seed1']})"
SOURCES = (
    Source("Gaussian", lambda m, labels, eta, seed: eta, controlled=False),
    Source("Gaussian x0.5", lambda m, labels, eta, seed: 0.5 * eta, controlled=False),
    Source(PROMPT_MEAN, _shifted(1.0)),
    Source("Gaussian x0.5 + prompt-mean shift", _shifted(0.5)),
    Source(GOLDEN_ROW, _golden),
    Source("NoiseAR T=1", _noisear("prior", 1.0)),
    Source("NoiseAR T=0.5", _noisear("prior", 0.5)),
    Source("NoiseAR T=1" + SEED1, _noisear("prior_seed1", 1.0)),
    Source("NoiseAR T=0.5" + SEED1, _noisear("prior_seed1", 0.5)),
    Source(f"blend NoiseAR T=1 + Gaussian (VP {BLEND_STRENGTH:g})", _blended(_noisear("prior", 1.0))),
    Source(f"blend NoiseAR T=0.5 + Gaussian (VP {BLEND_STRENGTH:g})", _blended(_noisear("prior", 0.5))),
    Source("Method 1: AR-consistency denoiser", lambda m, labels, eta, seed: eta, denoiser="denoiser_method1"),
    Source(f"Method 2: AR blend alpha {METHOD2_ALPHA:g}", _method2),
    Source("NoiseAR DPO T=1", _noisear("prior_dpo", 1.0)),
    Source("NoiseAR DPO T=0.5", _noisear("prior_dpo", 0.5)),
)


def seed_draws(seed: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels [N] = i mod 10, eta [N,1,8,8] standard normal from a generator seeded with ``seed``)."""
    if samples % NUM_CLASSES:
        raise ValueError(f"samples must be a multiple of {NUM_CLASSES} (equal count per class), got {samples}")
    labels = torch.arange(samples) % NUM_CLASSES
    return labels, torch.randn((samples, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(seed))


@dataclass
class Row:
    name: str
    noise_std: float
    sets: list[Scored]
    images: torch.Tensor  # first seed's images [N,1,8,8]
    control: "Row | None" = None
    tests: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class DemoResult:
    rows: list[Row]
    reference: Reference  # the test digits' features
    seeds: list[int]
    samples: int
    permutations: int

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def metric(self, name: str, metric: str) -> list[float]:
        """Per-seed values of ``metric`` for row ``name``."""
        return [METRICS[metric](s, self.reference) for s in self.row(name).sets]

    def paired(self, a: Row, b: Row, metric: str = "FD", p_value: float | None = None) -> dict:
        """Row a minus row b on ``metric``: mean over seeds ``diff``, the per-seed differences, ``better`` = how
        many seeds favour a, and ``p_value`` of the swap test (given, or run when permutations > 0)."""
        fn = METRICS[metric]
        per_seed = [fn(x, self.reference) - fn(y, self.reference) for x, y in zip(a.sets, b.sets)]
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        result = {"diff": sum(per_seed) / len(per_seed), "per_seed": per_seed, "better": sum(sign * d > 0 for d in per_seed)}
        if p_value is None and self.permutations:
            p_value = swap_test(fn, a.sets, b.sets, self.reference, self.permutations)["p_value"]
        if p_value is not None:
            result["p_value"] = p_value
        return result

    def vs_matched(self, name: str, metric: str = "FD") -> dict:
        """Row ``name`` against its Gaussian of matched std (see :meth:`paired`; the test run by evaluate)."""
        row = self.row(name)
        return self.paired(row, row.control, metric, row.tests.get(metric, {}).get("p_value"))

    def contrast(self, a: str, b: str, metric: str = "FD") -> dict:
        """Row a minus row b (see :meth:`paired`)."""
        return self.paired(self.row(a), self.row(b), metric)


@torch.no_grad()
def evaluate(
    models: ToyModels,
    seeds: Sequence[int],
    samples: int,
    permutations: int,
    sources: Sequence[Source] = SOURCES,
    controls: bool = True,
) -> DemoResult:
    """Render and score every source for every seed; with ``controls`` also its matched-std Gaussian (eta scaled
    to the source's std, same draws) and, with ``permutations`` > 0, the paired tests against it."""
    _, test = load_split()
    reference = Reference(score(models.classifier, test.images, test.labels).features)
    draws = {seed: seed_draws(seed, samples) for seed in seeds}

    def render(name: str, make: MakeNoise, denoiser: str) -> Row:
        sets, stds, first = [], [], None
        for seed in seeds:
            labels, eta = draws[seed]
            noise = make(models, labels, eta, seed)
            stds.append(float(noise.double().std()))
            images = ddim_sample(getattr(models, denoiser), noise, labels, steps=STEPS, guidance=GUIDANCE)
            first = images if first is None else first
            sets.append(score(models.classifier, images, labels))
        return Row(name, sum(stds) / len(stds), sets, first)

    rows = []
    for source in tqdm(sources, desc="demo sources", leave=False):
        row = render(source.name, source.make, source.denoiser)
        if source.controlled and controls:

            def matched(
                m: ToyModels, labels: torch.Tensor, eta: torch.Tensor, seed: int, std: float = row.noise_std
            ) -> torch.Tensor:
                return eta * (std / float(eta.double().std()))

            row.control = render(f"Gaussian x{row.noise_std:.3f}", matched, "denoiser")
            if permutations:
                row.tests = {
                    metric: swap_test(fn, row.sets, row.control.sets, reference, permutations) for metric, fn in METRICS.items()
                }
        rows.append(row)
    return DemoResult(rows, reference, list(seeds), samples, permutations)


def _cell(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def table(result: DemoResult) -> str:
    """Markdown table: one row per source; its matched-std Gaussian control, the paired tests and on how many
    seeds the source's FD is below its control's."""
    metrics = list(METRICS)
    header = [
        "source",
        "noise std",
        *metrics,
        "matched Gaussian FD",
        "FD below matched (seeds)",
        *(f"Δ{m} vs matched (p)" for m in metrics),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result.rows:
        values = [_cell([METRICS[m](s, result.reference) for s in row.sets]) for m in metrics]
        control = _cell([METRICS["FD"](s, result.reference) for s in row.control.sets]) if row.control else "—"
        wins = f"{result.vs_matched(row.name)['better']}/{len(result.seeds)}" if row.control else "—"
        tests = [f"{row.tests[m]['diff']:+.3f} ({row.tests[m]['p_value']:.3f})" if row.tests else "—" for m in metrics]
        lines.append("| " + " | ".join([row.name, f"{row.noise_std:.3f}", *values, control, wins, *tests]) + " |")
    better = ", ".join(f"{m} {'lower' if m in LOWER_IS_BETTER else 'higher'}" for m in metrics)
    lines += [
        "",
        f"{len(result.seeds)} seeds ({', '.join(map(str, result.seeds))}) x {result.samples} samples "
        f"({result.samples // NUM_CLASSES} per class), DDIM {STEPS} steps, guidance {GUIDANCE:g}. "
        f"Better: {better}. Mean ± std over seeds. Δ = source minus the Gaussian noise scaled to the "
        f"source's std (same draws); p: two-sided paired permutation test swapping the two images of "
        f"each item ({result.permutations} permutations), which treats the trained networks and the "
        f"draws as fixed; the seed counts show how often the sign holds on fresh draws.",
    ]
    return "\n".join(lines)


def _line(label: str, test: dict, seeds: int, metric: str = "FD") -> str:
    p = f", p {test['p_value']:.3f}" if "p_value" in test else ""
    per_seed = " ".join(f"{d:+.2f}" for d in test["per_seed"])
    return f"- {label}: Δ{metric} {test['diff']:+.3f}{p}; better on {test['better']}/{seeds} seeds ({per_seed})"


def contrasts(result: DemoResult) -> str:
    """The headline contrasts on FD with per-seed signs: each source against its matched Gaussian; the learned
    priors' share of the prompt-mean bar's gain; their gaps to both bars (Gaussian + prompt-mean shift, golden
    re-denoise); DPO against its starting prior."""
    names = {r.name for r in result.rows}
    seeds = len(result.seeds)
    lines = ["Each source against the Gaussian of its own std (ΔFD < 0: the source is better):"]
    for row in result.rows:
        if row.control is not None:
            lines.append(_line(row.name, result.vs_matched(row.name), seeds))
    priors = [name for name in ("NoiseAR T=1", "NoiseAR T=1" + SEED1, "NoiseAR DPO T=1") if name in names]
    if PROMPT_MEAN in names and result.row(PROMPT_MEAN).control is not None:
        bar = result.vs_matched(PROMPT_MEAN)["diff"]
        lines += ["", f"Share of the prompt-mean bar's gain over its matched Gaussian that the prior gets (bar: {bar:+.3f} FD):"]
        for name in priors:
            if result.row(name).control is not None:
                lines.append(f"- {name}: {result.vs_matched(name)['diff'] / bar:.0%}")
    lines += ["", "Gaps to the bars (ΔFD > 0: the prior is behind):"]
    bars = [(PROMPT_MEAN, "NoiseAR T=1"), (GOLDEN_ROW, "NoiseAR T=1"), ("Gaussian x0.5 + prompt-mean shift", "NoiseAR T=0.5")]
    for bar_name, prior in bars:
        for name in (prior, prior + SEED1):
            if bar_name in names and name in names:
                lines.append(_line(f"{name} − {bar_name}", result.contrast(name, bar_name), seeds))
    dpo = [
        (name, bar)
        for name, bar in (("NoiseAR DPO T=1", "NoiseAR T=1"), ("NoiseAR DPO T=1", GOLDEN_ROW))
        if name in names and bar in names
    ]
    if dpo:
        lines += ["", "DPO (its reward is the classifier that also scores this table):"]
        lines += [_line(f"{name} − {bar}", result.contrast(name, bar), seeds) for name, bar in dpo]
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


def grid(result: DemoResult, cell: int = 40) -> "PIL.Image.Image":  # noqa: F821
    """A labelled row per source (table order), a column per digit: the first seed's first sample of each class."""
    rows = []
    for row in result.rows:
        labels = torch.arange(len(row.images)) % NUM_CLASSES
        picks = torch.stack([row.images[labels == k][0] for k in range(NUM_CLASSES)])  # [10,1,8,8] in [-1,1]
        rows.append((row.name, (picks + 1) / 2))
    return labelled_grid(
        rows,
        columns=[str(k) for k in range(NUM_CLASSES)],
        cell=cell,
        title=f"seed {result.seeds[0]}: first sample of each requested digit",
    )


def comparisons(result: DemoResult, metrics: Sequence[str] = ("FD", "alignment")) -> dict[str, list[Comparison]]:
    """Per metric, each source's mean and std over seeds and those of its matched-std Gaussian control."""

    def stats(sets: list[Scored], metric: str) -> tuple[float, float]:
        values = torch.tensor([METRICS[metric](s, result.reference) for s in sets], dtype=torch.float64)
        return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0

    panels = {}
    for metric in metrics:
        panels[metric] = [
            Comparison(row.name, *stats(row.sets, metric), *(stats(row.control.sets, metric) if row.control else (None, None)))
            for row in result.rows
        ]
    return panels


DEFAULT_SEEDS = tuple(range(1, 11))


def run(
    checkpoints: Path, out: Path, seeds: Sequence[int] = DEFAULT_SEEDS, samples: int = 1000, permutations: int = 100
) -> dict[str, Path]:
    """Evaluate with the checkpoints of ``checkpoints`` and write out/table.md, out/grid.png and out/plot.png
    (the plot only with matplotlib; without it the table says it was skipped)."""
    torch.manual_seed(0)
    models = load_models(checkpoints)
    result = evaluate(models, seeds, samples, permutations)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "table.md", "grid": out / "grid.png"}
    grid(result).save(paths["grid"])
    plot = comparison_plot(
        out / "plot.png",
        comparisons(result),
        lower_is_better=sorted(LOWER_IS_BETTER),
        title="Toy demo: each source vs the Gaussian scaled to its std",
        note=f"mean ± std over {len(result.seeds)} seeds x {result.samples} samples",
    )
    if plot:
        paths["plot"] = plot
    figures = "plot.png: FD and alignment of each source and its matched Gaussian" if plot else PLOT_SKIPPED
    paths["table"].write_text(
        f"{table(result)}\n\n{contrasts(result)}\n\n{held_out_section(models, checkpoints)}\n\n{figures}\n", encoding="utf-8"
    )
    return paths
