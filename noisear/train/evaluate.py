"""The one evaluation layer: noise sources on the same items and seeds, each against the Gaussian of its own std.

``noisear eval`` (real backends and scorers) and the toy demo (noisear.toy.demo: its denoiser and classifier
metrics) both run :func:`evaluate` and write its report.

- *Sources.* A :class:`Source` makes noise for the evaluation's items (a PromptSet, the same for every seed)
  and one evaluation seed: (PromptSet, seed) -> [N,C,H,W]. Every source starts from the same draws of a seed,
  so sources are compared item by item. The ``*_source`` functions below are per-item seeded
  (:data:`NoiseSource`: (PromptSet, a seed per item) -> noise); :meth:`Source.item_seeded` gives every item
  of evaluation seed s the seed s.
- *Rendering and scoring.* A backend turns noise into images: (noise, PromptSet) -> images; a source may have
  its own (e.g. another denoiser). A :class:`Scoring` scores one seed's images as a set and gives each metric
  of that set: :class:`ItemScores` for per-item scorers (the metric is the mean over items), the toy's
  classifier metrics for set metrics such as the Frechet distance.
- *Matched controls.* A lower-variance start alone changes alignment and diversity, so every controlled
  source X gets the baseline's noise (same seeds) scaled to X's std, rendered by the evaluation's backend;
  a claimed gain has to beat it.
- *Paired statistics.* Differences per seed (on how many evaluation seeds a source beats another: do the
  gains hold draw after draw) and a paired permutation test on the items (one set of draws held fixed):
  :func:`paired_test` flips the signs of per-item differences, :func:`swap_test` swaps the two images of
  an item for set metrics.
- *Report.* :func:`table` (markdown), :func:`verdict` (each source against its bar on several metrics at once:
  a gain on one bought with another is not a gain), :func:`grid` (a labelled row of images per source) and
  :func:`comparisons` (each source against its control, for noisear.figures.comparison_plot), written by
  :func:`write_report`; :func:`save_report` is ``noisear eval``'s.

A "Gaussian + prompt-mean shift" source (:func:`prompt_mean_source`) is the bar a learned prior must clear:
it adds the prompt's mean shift to the seed's Gaussian noise, with no AR model. Real-model scorers are in
noisear.train.scorers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..config import NoiseARError
from ..figures import PLOT_SKIPPED, Comparison, comparison_plot, labelled_grid
from ..golden import Denoiser, GoldenConfig, Schedule, golden_noise
from ..mixing import blend
from ..model import NoiseAR, standard_normal
from .data import PromptSet
from .metrics import PromptMeanBaseline
from .runs import callable_name

NoiseSource = Callable[[PromptSet, Sequence[int]], torch.Tensor]  # (prompts, a seed per item) -> noise [B,C,H,W]
Backend = Callable[[torch.Tensor, PromptSet], torch.Tensor]  # (noise, prompts) -> images [B,...]
ImageScorer = Callable[[torch.Tensor, PromptSet], torch.Tensor]  # (images, prompts) -> score [B], higher is better


class EvaluationError(NoiseARError):
    """An evaluation that cannot run as asked: sources, backend or scorers give what the evaluation cannot use
    (wrong shapes, NaN), or its options do not fit. The message names the piece and what was expected."""


def checked_output(value: Any, what: str, count: int, ndim: int) -> torch.Tensor:
    """``value`` as a tensor of ``count`` items and ``ndim`` dimensions holding finite values, else an
    EvaluationError that names ``what`` produced it."""
    if not isinstance(value, torch.Tensor):
        raise EvaluationError(f"{what} returned a {type(value).__name__}; expected a torch tensor of {count} items")
    if value.ndim != ndim or value.shape[0] != count:
        expected = ", ".join([str(count), *["*"] * (ndim - 1)])
        raise EvaluationError(f"{what} returned shape {list(value.shape)}; expected [{expected}]")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise EvaluationError(f"{what} returned NaN or infinite values ({bad} of {value.numel()}); refusing to report them")
    return value


# Sources -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One row of an evaluation. ``noise(items, seed)`` -> [N,C,H,W] for the N items and one evaluation seed;
    ``backend``: what renders it (None: the evaluation's); ``controlled``: compared with its matched Gaussian."""

    name: str
    noise: Callable[[PromptSet, int], torch.Tensor]
    backend: Backend | None = None
    controlled: bool = True

    @classmethod
    def item_seeded(cls, name: str, source: NoiseSource, **options: Any) -> "Source":
        """A per-item seeded source: every item of evaluation seed s gets the seed s."""
        return cls(name, lambda prompts, seed: source(prompts, [seed] * len(prompts)), **options)


def gaussian_source(shape: Sequence[int], std: float = 1.0) -> NoiseSource:
    """std * standard_normal with one seed per item."""
    return lambda prompts, seeds: std * standard_normal((len(seeds), *shape), list(seeds))


def noisear_source(model: NoiseAR, temperature: float) -> NoiseSource:
    """NoiseAR samples whose eps is the Gaussian noise of the same seeds."""
    c = model.config
    shape = (c.channels, c.latent_height, c.latent_width)
    device = next(model.parameters()).device

    def source(prompts: PromptSet, seeds: Sequence[int]) -> torch.Tensor:
        eps = standard_normal((len(seeds), *shape), list(seeds))
        return (
            model.sample(prompts.text.to(device), eps.to(device), temperature=temperature, text_mask=prompts.text_mask.to(device))
            .detach()
            .cpu()
        )

    return source


def golden_source(
    denoiser: Denoiser,
    schedule: Schedule,
    conditioning: Callable[[PromptSet], tuple[Any, Any]],
    shape: Sequence[int],
    config: GoldenConfig = GoldenConfig(),
) -> NoiseSource:
    """Golden re-denoise of the Gaussian noise of the same seeds; conditioning(prompts) -> (cond, uncond)."""

    def source(prompts: PromptSet, seeds: Sequence[int]) -> torch.Tensor:
        cond, uncond = conditioning(prompts)
        return golden_noise(denoiser, schedule, standard_normal((len(seeds), *shape), list(seeds)), cond, uncond, config).cpu()

    return source


def prompt_mean_source(baseline: PromptMeanBaseline, shape: Sequence[int]) -> NoiseSource:
    """Gaussian noise of the seeds plus the prompt-mean baseline's predicted mean shift for each prompt (the
    ridge regression of noise - starting noise on the pooled prompt embedding; no AR model)."""

    def source(prompts: PromptSet, seeds: Sequence[int]) -> torch.Tensor:
        shift = baseline.mean(prompts.text, prompts.text_mask).float().reshape(len(prompts), *shape)
        return standard_normal((len(seeds), *shape), list(seeds)) + shift

    return source


BLEND_SEED_OFFSET = 1_000_003  # the blend's Gaussian partner is drawn from seed + this offset


def blend_source(source: NoiseSource, shape: Sequence[int], strength: float, mode: str = "variance-preserving") -> NoiseSource:
    """noisear.mixing.blend of ``source`` with Gaussian noise independent of it.

    The partner is drawn from ``seed + BLEND_SEED_OFFSET``, not from the seed itself: a NoiseAR source
    uses the seed's draws as its eps, and blending with those same draws would correlate the two
    inputs (a variance-preserving blend of correlated inputs no longer has their variance).
    """

    def mixed(prompts: PromptSet, seeds: Sequence[int]) -> torch.Tensor:
        partner = standard_normal((len(seeds), *shape), [seed + BLEND_SEED_OFFSET for seed in seeds])
        return blend(source(prompts, seeds), partner, strength, mode)

    return mixed


# Paired statistics -------------------------------------------------------------------------------
def paired_test(a: np.ndarray, b: np.ndarray, permutations: int = 10000, seed: int = 0) -> dict[str, float]:
    """Paired comparison of per-item scores a and b on the same items: mean difference a - b, paired t statistic,
    and the two-sided p-value of a sign-flip permutation test (exact for up to 16 pairs)."""
    diff = np.asarray(a, dtype=np.float64).ravel() - np.asarray(b, dtype=np.float64).ravel()
    n = len(diff)
    if n < 2:
        raise EvaluationError("a paired test needs at least two pairs (seeds x prompts >= 2)")
    sd = diff.std(ddof=1)
    t = diff.mean() / (sd / math.sqrt(n)) if sd > 0 else (0.0 if diff.mean() == 0 else math.copysign(math.inf, diff.mean()))
    exact = n <= 16
    if exact:  # every sign pattern
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(permutations, n))
    extreme = int((np.abs((signs * diff).mean(axis=1)) >= abs(diff.mean()) - 1e-12).sum())
    p_value = extreme / len(signs) if exact else (extreme + 1) / (len(signs) + 1)
    return {"diff": float(diff.mean()), "t": float(t), "p_value": p_value, "n": n}


class Swappable(Protocol):
    """A scored set of items whose item i can be exchanged with item i of another set of the same items."""

    def __len__(self) -> int: ...

    def take(self, mask: torch.Tensor, other: Any) -> Any:
        """Items of ``self`` where mask [N] is True, else those of ``other``."""


def swap_test(
    metric: Callable[[Any], float], a: Sequence[Swappable], b: Sequence[Swappable], permutations: int = 200, seed: int = 0
) -> dict[str, float]:
    """Paired permutation test of the mean over seeds of metric(a_s) - metric(b_s), for metrics of a whole set.

    ``a`` and ``b`` are per-seed sets whose item i shares its prompt and initial draw. Under the null
    hypothesis each item's two images are exchangeable, so the null distribution comes from swapping
    them at random (for a mean metric this is the sign-flip test). Two-sided p with the +1 correction.
    """

    def statistic(pairs: Sequence[tuple[Any, Any]]) -> float:
        return sum(metric(x) - metric(y) for x, y in pairs) / len(pairs)

    observed = statistic(list(zip(a, b)))
    generator = torch.Generator().manual_seed(seed)
    extreme = 0
    for _ in range(permutations):
        swapped = []
        for x, y in zip(a, b):
            mask = torch.rand(len(x), generator=generator) < 0.5
            swapped.append((x.take(mask, y), y.take(mask, x)))
        extreme += abs(statistic(swapped)) >= abs(observed) - 1e-12
    return {"diff": observed, "p_value": (extreme + 1) / (permutations + 1)}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


# Scoring -----------------------------------------------------------------------------------------
class Scoring(Protocol):
    """How one seed's images are scored, and how two sources' scored sets are tested against each other."""

    metrics: tuple[str, ...]
    lower_is_better: frozenset[str]

    def score(self, images: torch.Tensor, prompts: PromptSet) -> Any:
        """The scored set of one seed's images of the items."""

    def value(self, scored: Any, metric: str) -> float:
        """``metric`` of one scored set."""

    def p_value(self, a: Sequence[Any], b: Sequence[Any], metric: str, permutations: int) -> float:
        """Two-sided p of a paired permutation test of ``metric`` on per-seed scored sets of the same items."""


class ItemScores:
    """Per-item scorers (images, prompts) -> [N], higher is better: a metric is the mean over the items, tested
    by :func:`paired_test` on the (seed, item) pairs."""

    lower_is_better: frozenset[str] = frozenset()

    def __init__(self, scorers: dict[str, ImageScorer]) -> None:
        self.scorers = scorers
        self.metrics = tuple(scorers)

    def score(self, images: torch.Tensor, prompts: PromptSet) -> dict[str, np.ndarray]:
        """Each scorer's [N] scores; a scorer that gives another shape or a non-finite score is refused by name."""
        return {
            name: checked_output(scorer(images, prompts), f"scorer {name!r} ({callable_name(scorer)})", len(images), 1)
            .detach()
            .double()
            .cpu()
            .numpy()
            for name, scorer in self.scorers.items()
        }

    def value(self, scored: dict[str, np.ndarray], metric: str) -> float:
        return float(scored[metric].mean())

    def p_value(self, a: Sequence[dict], b: Sequence[dict], metric: str, permutations: int) -> float:
        return paired_test(np.stack([s[metric] for s in a]), np.stack([s[metric] for s in b]), permutations)["p_value"]


# Evaluation --------------------------------------------------------------------------------------
@dataclass
class Row:
    """One source (or control): ``scored`` per seed, ``values[metric]`` per seed, the first seed's images, its
    matched control and ``p_values[metric]`` of the paired test against that control."""

    name: str
    noise_std: float
    scored: list[Any]
    values: dict[str, list[float]]
    images: torch.Tensor
    control: "Row | None" = None
    p_values: dict[str, float] = field(default_factory=dict)


@dataclass
class Evaluation:
    """Every source's row, in the order given; ``items`` per seed."""

    rows: list[Row]
    scoring: Scoring
    seeds: list[int]
    items: int
    baseline: str
    permutations: int

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no source named {name!r}; the sources are {[r.name for r in self.rows]}")

    def values(self, name: str, metric: str) -> list[float]:
        """Per-seed values of ``metric`` for source ``name``."""
        return self.row(name).values[metric]

    def paired(self, a: Row, b: Row, metric: str, p_value: float | None = None, test: bool = True) -> dict:
        """Row a minus row b on ``metric``: mean over seeds ``diff``, the differences ``per_seed``, ``better`` = on
        how many seeds a is better, and ``p_value`` of the paired test (given, or run when permutations > 0 and
        ``test``)."""
        per_seed = [x - y for x, y in zip(a.values[metric], b.values[metric])]
        sign = -1.0 if metric in self.scoring.lower_is_better else 1.0
        result = {"diff": sum(per_seed) / len(per_seed), "per_seed": per_seed, "better": sum(sign * d > 0 for d in per_seed)}
        if p_value is None and self.permutations and test:
            p_value = self.scoring.p_value(a.scored, b.scored, metric, self.permutations)
        if p_value is not None:
            result["p_value"] = p_value
        return result

    def vs_matched(self, name: str, metric: str) -> dict:
        """Source ``name`` against its matched Gaussian (see :meth:`paired`; the test run by :func:`evaluate`)."""
        row = self.row(name)
        if row.control is None:
            raise EvaluationError(f"source {name!r} has no matched Gaussian")
        return self.paired(row, row.control, metric, row.p_values.get(metric))

    def contrast(self, a: str, b: str, metric: str, test: bool = True) -> dict:
        """Source a minus source b (see :meth:`paired`)."""
        return self.paired(self.row(a), self.row(b), metric, test=test)


def control_name(baseline: str, source: str) -> str:
    """Name of the baseline noise scaled to ``source``'s std."""
    return f"{baseline}@std({source})"


def noise_std(noises: Sequence[torch.Tensor], per_seed: bool) -> float:
    """Std of a source's noise over all seeds at once, or (``per_seed``) the mean of its per-seed stds."""
    if per_seed:
        stds = [float(noise.double().std()) for noise in noises]
        return sum(stds) / len(stds)
    return float(torch.stack(list(noises)).double().std())


def matched_gaussian(baseline: Sequence[torch.Tensor], std: float, per_seed: bool) -> list[torch.Tensor]:
    """The baseline's noise of every seed scaled so that its std (as :func:`noise_std` measures it) is ``std``:
    one factor for all seeds, or (``per_seed``) each seed's noise scaled to exactly ``std``."""
    if per_seed:
        return [noise * (std / float(noise.double().std())) for noise in baseline]
    factor = std / float(torch.stack(list(baseline)).double().std())
    return [noise * factor for noise in baseline]


@torch.no_grad()
def evaluate(
    sources: Sequence[Source],
    backend: Backend,
    scoring: Scoring,
    prompts: PromptSet,
    seeds: Sequence[int],
    baseline: str = "gaussian",
    permutations: int = 10000,
    controls: bool = True,
    std_per_seed: bool = False,
    progress: str | None = None,
) -> Evaluation:
    """Render and score every source on every seed's items; with ``controls`` also each controlled source's
    matched Gaussian (the ``baseline`` source's noise of the same seeds scaled to the source's std) and, with
    ``permutations`` > 0, the paired tests against it.

    ``std_per_seed`` says how a std is measured (:func:`noise_std`): over all seeds at once (then a source that
    is a scaled baseline has exactly its control's noise), or per seed (each seed's control has exactly the
    source's std; the toy demo's rule). ``progress``: a tqdm label, or None for no bar.
    """
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise EvaluationError(f"source names must be unique, got {names}")
    if baseline not in names:
        raise EvaluationError(f"baseline {baseline!r} is not one of the sources {names}")
    seeds = list(seeds)
    if not seeds:
        raise EvaluationError("an evaluation needs at least one seed")
    base = sources[names.index(baseline)]

    def noise_of(source: Source, seed: int) -> torch.Tensor:
        return checked_output(source.noise(prompts, seed), f"source {source.name!r}", len(prompts), 4)

    baseline_noise = [noise_of(base, seed) for seed in seeds]

    def render(name: str, noises: list[torch.Tensor], render_with: Backend) -> Row:
        scored, first = [], None
        for noise in noises:
            images = checked_output(render_with(noise, prompts), f"backend {callable_name(render_with)}", len(prompts), 4)
            first = images.detach().cpu() if first is None else first
            scored.append(scoring.score(images, prompts))
        values = {metric: [scoring.value(s, metric) for s in scored] for metric in scoring.metrics}
        return Row(name, noise_std(noises, std_per_seed), scored, values, first)

    rows = []
    for source in tqdm(sources, desc=progress, leave=False, disable=progress is None):
        noises = baseline_noise if source is base else [noise_of(source, seed) for seed in seeds]
        row = render(source.name, noises, source.backend or backend)
        if controls and source.controlled and source is not base:
            matched = matched_gaussian(baseline_noise, row.noise_std, std_per_seed)
            row.control = render(control_name(baseline, source.name), matched, backend)
            if permutations:
                row.p_values = {m: scoring.p_value(row.scored, row.control.scored, m, permutations) for m in scoring.metrics}
        rows.append(row)
    return Evaluation(rows, scoring, seeds, len(prompts), baseline, permutations)


# Report ------------------------------------------------------------------------------------------
def table(
    result: Evaluation, digits: int = 4, headline: Sequence[str] | None = None, versus_baseline: bool = False, note: str = ""
) -> str:
    """Markdown: one row per source with its noise std and each metric's mean ± std over seeds; for each
    ``headline`` metric (default: all) its matched Gaussian's and on how many seeds the source is better; each
    metric's difference to the matched Gaussian with the test's p (when run); with ``versus_baseline`` the same
    against the baseline source; then ``note``."""
    metrics = list(result.scoring.metrics)
    headline = metrics if headline is None else list(headline)
    lower = result.scoring.lower_is_better

    def cell(values: Sequence[float]) -> str:
        mean, std = mean_std(values)
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    def difference(test: dict) -> str:
        p = f" ({test['p_value']:.{digits}f})" if "p_value" in test else ""
        return f"{test['diff']:+.{digits}f}{p}"

    header = ["source", "noise std", *metrics]
    for m in headline:
        header += [f"matched Gaussian {m}", f"{m} {'below' if m in lower else 'above'} matched (seeds)"]
    header += [f"Δ{m} vs matched (p)" for m in metrics]
    if versus_baseline:
        header += [f"Δ{m} vs {result.baseline} (p)" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result.rows:
        cells = [row.name, f"{row.noise_std:.{digits}f}", *(cell(row.values[m]) for m in metrics)]
        for m in headline:
            if row.control is None:
                cells += ["—", "—"]
            else:
                cells += [cell(row.control.values[m]), f"{result.vs_matched(row.name, m)['better']}/{len(result.seeds)}"]
        cells += [difference(result.vs_matched(row.name, m)) if row.p_values else "—" for m in metrics]
        if versus_baseline:
            base = result.row(result.baseline)
            cells += ["—" if row is base else difference(result.paired(row, base, m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", note] if note else lines)


def verdict(
    result: Evaluation, pairs: Sequence[tuple[str, str]], metrics: Sequence[str], share: float = 0.8, digits: int = 3
) -> str:
    """Markdown: each (source, bar) of ``pairs`` on every one of ``metrics``: the mean difference over seeds and on
    how many seeds the source is better. A source **beats its bar** only when it is better on at least ``share`` of
    the seeds on every metric (a tie is not better): a gain on one metric that costs another (FD bought with
    lost coverage, say) is not a gain."""
    seeds = len(result.seeds)
    header = ["source", "its bar", *(f"Δ{m} (better on seeds)" for m in metrics), "beats its bar"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, bar in pairs:
        tests = [result.contrast(name, bar, m, test=False) for m in metrics]
        cells = [f"{t['diff']:+.{digits}f} ({t['better']}/{seeds})" for t in tests]
        beats = all(t["better"] >= share * seeds for t in tests)
        lines.append("| " + " | ".join([name, bar, *cells, "**yes**" if beats else "no"]) + " |")
    note = (
        f"Δ = source minus its bar, mean over {seeds} seeds; a source beats its bar only if it is better on at least "
        f"{share:.0%} of the seeds on every one of {', '.join(metrics)}."
    )
    return "\n".join(lines + ["", note])


def comparisons(result: Evaluation, metrics: Sequence[str] | None = None) -> dict[str, list[Comparison]]:
    """Per metric (default: all), each source's mean ± std over seeds and those of its matched Gaussian."""
    panels = {}
    for metric in result.scoring.metrics if metrics is None else metrics:
        panels[metric] = [
            Comparison(
                row.name,
                *mean_std(row.values[metric]),
                *(mean_std(row.control.values[metric]) if row.control else (None, None)),
            )
            for row in result.rows
        ]
    return panels


def grid(
    result: Evaluation,
    title: str,
    view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    columns: Sequence[str] | None = None,
    cell: int = 48,
) -> Image.Image:
    """A labelled row per source (table order) of its first seed's images, through ``view`` (images -> the
    [K,C,h,w] in [0,1] to show; default: all of them as they are)."""
    rows = [(row.name, view(row.images) if view else row.images) for row in result.rows]
    return labelled_grid(rows, columns=columns, cell=cell, title=title)


def write_report(
    result: Evaluation,
    out_dir: str | Path,
    table_file: str,
    sections: Sequence[str],
    picture: Image.Image,
    plot_metrics: Sequence[str] | None = None,
    plot_title: str = "",
    plot_note: str = "",
) -> dict[str, Path]:
    """Write OUT/table_file (the ``sections``, then what plot.png shows or why it is missing), OUT/grid.png
    (``picture``) and OUT/plot.png (``plot_metrics`` of each source against its matched Gaussian; only with
    matplotlib). Returns the paths written: table, grid and, when written, plot."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": out_dir / table_file, "grid": out_dir / "grid.png"}
    picture.save(paths["grid"])
    panels = comparisons(result, plot_metrics)
    plot = comparison_plot(
        out_dir / "plot.png", panels, lower_is_better=sorted(result.scoring.lower_is_better), title=plot_title, note=plot_note
    )
    if plot:
        paths["plot"] = plot
        names = list(panels)
        shown = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        figures = f"plot.png: {shown} of each source and its matched Gaussian"
    else:
        figures = PLOT_SKIPPED
    paths["table"].write_text("\n\n".join([*sections, figures]) + "\n", encoding="utf-8")
    return paths


def eval_table(result: Evaluation) -> str:
    """``noisear eval``'s table: every scorer, 4 decimals, the tests against the matched Gaussian and the baseline."""
    note = (
        f"{len(result.seeds)} seeds x {result.items} prompts. Mean ± std over seeds. Matched Gaussian: the "
        f"`{result.baseline}` draws of the same seeds scaled to the source's std; Δ = source minus it. p: two-sided "
        f"paired sign-flip permutation test on the (seed, prompt) pairs ({result.permutations} permutations, exact up "
        f"to 16 pairs); seeds: evaluation seeds on which the source's mean over prompts beats its matched Gaussian's."
    )
    return table(result, digits=4, versus_baseline=True, note=note)


def save_report(result: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """``noisear eval``'s files: results.md (:func:`eval_table`), grid.png (a labelled row per source: the first
    seed's image of every prompt) and plot.png (each scorer per source against its matched Gaussian; only with
    matplotlib, else results.md says so)."""
    return write_report(
        result,
        out_dir,
        "results.md",
        [eval_table(result)],
        grid(result, title=f"seed {result.seeds[0]}: one image per prompt"),
        plot_title=f"Each source vs {result.baseline} noise scaled to its std",
        plot_note=f"mean ± std over {len(result.seeds)} seeds of the mean over {result.items} prompts",
    )
