"""The demo's evaluation: every noise source on the same labels and draws, scored by the classifier;
a markdown table (mean +- std over seeds, paired permutation test against the Gaussian of matched
std), a labelled image grid (rows: noise source, columns: classes) and a plot of FD and alignment of
each source against its matched-std Gaussian (noisear.figures).

Item i of seed s asks for class i mod 10 and starts from the Gaussian draw eta_i of that seed; every
source transforms that same eta (NoiseAR uses it as its eps), so sources are compared item by item.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from ..figures import PLOT_SKIPPED, Comparison, comparison_plot, labelled_grid
from ..golden import golden_noise
from ..mixing import blend
from .checkpoints import ToyModels, load_models
from .data import IMAGE_SHAPE, NUM_CLASSES, load_split
from .diffusion import ddim_sample, schedule, unconditional
from .methods import ar_blend_noise
from .metrics import LOWER_IS_BETTER, METRICS, Reference, Scored, score, swap_test
from .prior import GOLDEN, GUIDANCE, STEPS, class_text

METHOD2_ALPHA = 0.2
BLEND_STRENGTH = 0.5

# (models, labels [N], eta [N,1,8,8], seed) -> initial noise [N,1,8,8]
MakeNoise = Callable[[ToyModels, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Source:
    name: str
    make: MakeNoise
    denoiser: str = "denoiser"   # the ToyModels attribute that renders it
    controlled: bool = True      # compared with the Gaussian of matched std


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


SOURCES = (
    Source("Gaussian", lambda m, labels, eta, seed: eta, controlled=False),
    Source("Gaussian x0.5", lambda m, labels, eta, seed: 0.5 * eta, controlled=False),
    Source("NoiseAR T=1", _noisear("prior", 1.0)),
    Source("NoiseAR T=0.5", _noisear("prior", 0.5)),
    Source(f"golden re-denoise (w_l {GOLDEN.guidance_denoise:g})", _golden),
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
    images: torch.Tensor                       # first seed's images [N,1,8,8]
    control: "Row | None" = None
    tests: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class DemoResult:
    rows: list[Row]
    reference: Reference                       # the test digits' features
    seeds: list[int]
    samples: int
    permutations: int

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def metric(self, name: str, metric: str) -> list[float]:
        """Per-seed values of ``metric`` for row ``name``."""
        return [METRICS[metric](s, self.reference) for s in self.row(name).sets]

    def contrast(self, a: str, b: str, metric: str = "FD") -> dict[str, float]:
        """Paired permutation test of row a minus row b."""
        return swap_test(METRICS[metric], self.row(a).sets, self.row(b).sets, self.reference, self.permutations)


@torch.no_grad()
def evaluate(models: ToyModels, seeds: Sequence[int], samples: int, permutations: int,
             sources: Sequence[Source] = SOURCES) -> DemoResult:
    """Render and score every source for every seed; with ``permutations`` > 0 also its matched-std Gaussian
    control and the paired tests against it."""
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
        if source.controlled and permutations:
            def matched(m: ToyModels, labels: torch.Tensor, eta: torch.Tensor, seed: int, std: float = row.noise_std
                        ) -> torch.Tensor:
                return eta * (std / float(eta.double().std()))
            row.control = render(f"Gaussian x{row.noise_std:.3f}", matched, "denoiser")
            row.tests = {metric: swap_test(fn, row.sets, row.control.sets, reference, permutations)
                         for metric, fn in METRICS.items()}
        rows.append(row)
    return DemoResult(rows, reference, list(seeds), samples, permutations)


def _cell(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def table(result: DemoResult) -> str:
    """Markdown table: one row per source; its matched-std Gaussian control and the paired test."""
    metrics = list(METRICS)
    header = ["source", "noise std", *metrics, "matched Gaussian FD",
              *(f"Δ{m} vs matched (p)" for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result.rows:
        values = [_cell([METRICS[m](s, result.reference) for s in row.sets]) for m in metrics]
        control = _cell([METRICS["FD"](s, result.reference) for s in row.control.sets]) if row.control else "—"
        tests = [f"{row.tests[m]['diff']:+.3f} ({row.tests[m]['p_value']:.3f})" if row.tests else "—" for m in metrics]
        lines.append("| " + " | ".join([row.name, f"{row.noise_std:.3f}", *values, control, *tests]) + " |")
    better = ", ".join(f"{m} {'lower' if m in LOWER_IS_BETTER else 'higher'}" for m in metrics)
    lines += ["", f"{len(result.seeds)} seeds ({', '.join(map(str, result.seeds))}) x {result.samples} samples "
                  f"({result.samples // NUM_CLASSES} per class), DDIM {STEPS} steps, guidance {GUIDANCE:g}. "
                  f"Better: {better}. Mean ± std over seeds. Δ = source minus the Gaussian noise scaled to the "
                  f"source's std (same draws); p: two-sided paired permutation test swapping the two images of "
                  f"each item ({result.permutations} permutations)."]
    return "\n".join(lines)


def contrasts(result: DemoResult) -> str:
    """The issue's named contrasts on FD, as markdown bullet points."""
    pairs = [("NoiseAR T=1", "Gaussian"), ("NoiseAR T=0.5", "Gaussian x0.5"),
             ("NoiseAR T=1", SOURCES[4].name), ("NoiseAR DPO T=1", "NoiseAR T=1")]
    names = {r.name for r in result.rows}
    lines = []
    for a, b in pairs:
        if a in names and b in names and result.permutations:
            test = result.contrast(a, b)
            lines.append(f"- FD {a} − {b}: {test['diff']:+.3f} (p {test['p_value']:.3f})")
    return "\n".join(lines)


def grid(result: DemoResult, cell: int = 40) -> "PIL.Image.Image":  # noqa: F821
    """A labelled row per source (table order), a column per digit: the first seed's first sample of each class."""
    rows = []
    for row in result.rows:
        labels = torch.arange(len(row.images)) % NUM_CLASSES
        picks = torch.stack([row.images[labels == k][0] for k in range(NUM_CLASSES)])  # [10,1,8,8] in [-1,1]
        rows.append((row.name, (picks + 1) / 2))
    return labelled_grid(rows, columns=[str(k) for k in range(NUM_CLASSES)], cell=cell,
                         title=f"seed {result.seeds[0]}: first sample of each requested digit")


def comparisons(result: DemoResult, metrics: Sequence[str] = ("FD", "alignment")) -> dict[str, list[Comparison]]:
    """Per metric, each source's mean and std over seeds and those of its matched-std Gaussian control."""
    def stats(sets: list[Scored], metric: str) -> tuple[float, float]:
        values = torch.tensor([METRICS[metric](s, result.reference) for s in sets], dtype=torch.float64)
        return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0

    panels = {}
    for metric in metrics:
        panels[metric] = [Comparison(row.name, *stats(row.sets, metric), *(stats(row.control.sets, metric)
                                                                         if row.control else (None, None)))
                          for row in result.rows]
    return panels


def run(checkpoints: Path, out: Path, seeds: Sequence[int] = (1, 2, 3), samples: int = 1000,
        permutations: int = 100) -> dict[str, Path]:
    """Evaluate with the checkpoints of ``checkpoints`` and write out/table.md, out/grid.png and out/plot.png
    (the plot only with matplotlib; without it the table says it was skipped)."""
    torch.manual_seed(0)
    result = evaluate(load_models(checkpoints), seeds, samples, permutations)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "table.md", "grid": out / "grid.png"}
    grid(result).save(paths["grid"])
    plot = comparison_plot(out / "plot.png", comparisons(result), lower_is_better=sorted(LOWER_IS_BETTER),
                           title="Toy demo: each source vs the Gaussian scaled to its std",
                           note=f"mean ± std over {len(result.seeds)} seeds x {result.samples} samples")
    if plot:
        paths["plot"] = plot
    figures = "plot.png: FD and alignment of each source and its matched Gaussian" if plot else PLOT_SKIPPED
    paths["table"].write_text(f"{table(result)}\n\nNamed contrasts:\n{contrasts(result)}\n\n{figures}\n", encoding="utf-8")
    return paths
