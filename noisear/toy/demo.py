"""The toy demo's one pipeline: an evaluation (noisear.train.evaluate) of every noise source of a testbed,
rendered by the testbed's diffusion model and scored by its judge (noisear.toy.metrics), then its report.

A :class:`Testbed` says what differs: checkpoints, prompts, sources, rendering, judging, held-out figures.
The testbeds are noisear.toy.testbed_digits (``python -m noisear demo``) and noisear.toy.testbed_layout
(``python -m noisear demo layout``).

Item i of seed s asks for the testbed's prompt i mod P and starts from the Gaussian draw eta_i of that seed;
every source transforms that same eta (NoiseAR uses it as its eps), so sources are compared item by item.
Besides the evaluation's table (mean ± std over seeds, paired permutation test and per-seed signs against the
Gaussian of matched std), the report has the verdict against the bars (a source beats its bar only if it is
better on FD, coverage and the direct check of the prompt alike), the headline contrasts and the held-out
likelihood.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from ..mixing import blend
from ..train import evaluate as evaluation
from ..train.data import PromptSet

# (the items, eta [N,...] of the seed, the seed) -> initial noise [N,...]
MakeNoise = Callable[[PromptSet, torch.Tensor, int], torch.Tensor]

GAUSSIAN = "Gaussian"
HALF_GAUSSIAN = "Gaussian x0.5"
PROMPT_MEAN = "Gaussian + prompt-mean shift"
HALF_PROMPT_MEAN = "Gaussian x0.5 + prompt-mean shift"
EXAGGERATIONS = (1.25, 2.0)  # the prompt-mean shift scaled up: FD rewards exaggeration, coverage does not
BLEND_STRENGTH = 0.5
SEED1 = " (training seed 1)"
PRIOR_T1, PRIOR_T05 = "NoiseAR T=1", "NoiseAR T=0.5"
DPO_T1 = "NoiseAR DPO T=1"
DEFAULT_SEEDS = tuple(range(1, 11))
PERMUTATIONS = 100


def exaggerated(factor: float) -> str:
    """The row of the prompt-mean shift scaled by ``factor``."""
    return f"{PROMPT_MEAN} x{factor:g}"


def draw(seed: int, samples: int, shape: Sequence[int]) -> torch.Tensor:
    """eta [N, *shape]: standard normal from a generator seeded with ``seed``, one draw per item."""
    return torch.randn((samples, *shape), generator=torch.Generator().manual_seed(seed))


def gaussian(scale: float = 1.0) -> MakeNoise:
    return lambda items, eta, seed: scale * eta


def shifted(shift: Callable[[PromptSet], torch.Tensor], scale: float = 1.0, factor: float = 1.0) -> MakeNoise:
    """scale * eta + factor * the prompt-mean shift of the items (no AR model)."""
    return lambda items, eta, seed: scale * eta + factor * shift(items)


def noisear(prior: torch.nn.Module, temperature: float) -> MakeNoise:
    """A NoiseAR prior's sample with eps = eta."""
    return lambda items, eta, seed: prior.sample(items.text, eta, temperature=temperature, text_mask=items.text_mask)


def blended(inner: MakeNoise, strength: float = BLEND_STRENGTH) -> MakeNoise:
    """Variance-preserving blend with a second, independent Gaussian draw. (Blending with eta itself, which is
    also the prior's eps, would add correlated noise: std 1.38 instead of 1 at strength 0.5.)"""

    def make(items: PromptSet, eta: torch.Tensor, seed: int) -> torch.Tensor:
        other = torch.randn(eta.shape, generator=torch.Generator().manual_seed(20_000 + seed))
        return blend(inner(items, eta, seed), other, strength, mode="variance-preserving")

    return make


def prompt_mean_rows(shift: Callable[[PromptSet], torch.Tensor]) -> list[tuple[str, MakeNoise]]:
    """The bars (Gaussian + the prompt-mean shift, at std 1 and 0.5) and the exaggerated shifts."""
    return [
        (PROMPT_MEAN, shifted(shift)),
        *((exaggerated(k), shifted(shift, factor=k)) for k in EXAGGERATIONS),
        (HALF_PROMPT_MEAN, shifted(shift, scale=0.5)),
    ]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def nll_markdown(
    nll: dict[str, dict[str, float]], groups: Sequence[str], reference: str = "N(0,I)", gains_only: bool = False
) -> str:
    """{model: {group: NLL nats/dim}} -> a table with each group's NLL and gain over ``reference`` (> 0: better),
    or (``gains_only``) the gains alone."""
    labels = ("gain,",) if gains_only else ("NLL", "gain,")
    header = ["model"] + [f"{label} {group}" for group in groups for label in labels]
    rows = []
    for name, values in nll.items():
        if gains_only and name == reference:
            continue
        cells = [name]
        for group in groups:
            gain = f"{nll[reference][group] - values[group]:+.5f}" if group in values else "—"
            cells += [gain] if gains_only else [f"{values[group]:.5f}" if group in values else "—", gain]
        rows.append(cells)
    return markdown_table(header, rows)


def _line(label: str, test: dict, seeds: int, metric: str = "FD") -> str:
    p = f", p {test['p_value']:.3f}" if "p_value" in test else ""
    per_seed = " ".join(f"{d:+.2f}" for d in test["per_seed"])
    return f"- {label}: Δ{metric} {test['diff']:+.3f}{p}; better on {test['better']}/{seeds} seeds ({per_seed})"


class Testbed(ABC):
    """One testbed of the toy demo: what it renders, judges and compares. Subclasses fill in the abstract parts."""

    name: str  # the CLI's name: python -m noisear demo NAME
    summary: str  # one line for the CLI's help
    directory: Path  # the shipped checkpoints
    shape: tuple[int, ...]  # the noise of one item [C, H, W]
    samples: int  # items per seed by default
    golden_row: str  # the golden re-denoise row (a bar)
    verdict_metrics: tuple[str, ...]  # FD, coverage and the direct check of what the prompt asks
    plot_metrics: tuple[str, ...]
    title: str  # of the plot and grid

    @abstractmethod
    def load(self, directory: Path) -> Any:
        """The models of the checkpoints in ``directory``."""

    @abstractmethod
    def retrain(self, directory: Path, resume: bool, command: str) -> dict[str, float]:
        """Train every checkpoint from scratch into ``directory`` (MANIFEST.md records ``command``)."""

    @abstractmethod
    def items(self, models: Any, samples: int) -> PromptSet:
        """The evaluation's items (the same for every seed)."""

    @abstractmethod
    def renderer(self, models: Any) -> evaluation.Backend:
        """noise -> images for the items (DDIM, 25 steps, guidance 1)."""

    @abstractmethod
    def scoring(self, models: Any, items: PromptSet) -> evaluation.Scoring:
        """The judge's metrics of a seed's images."""

    @abstractmethod
    def sources(self, models: Any) -> list[evaluation.Source]:
        """Every noise source, in table order; the first is "Gaussian"."""

    @abstractmethod
    def held_out_section(self, models: Any, directory: Path) -> str:
        """Markdown: the held-out likelihood computed now and the figures recorded by --retrain."""

    @abstractmethod
    def grid(self, result: evaluation.Evaluation) -> Image.Image:
        """A labelled row per source of the first seed's images."""

    def table_note(self, result: evaluation.Evaluation) -> str:
        return ""

    def extra_contrasts(self, names: set[str]) -> list[tuple[str, str]]:
        """More (source, other) FD contrasts for the headline list."""
        return []

    # The pipeline ---------------------------------------------------------------------------------------------
    def source(
        self, name: str, make: MakeNoise, backend: evaluation.Backend | None = None, controlled: bool = True
    ) -> evaluation.Source:
        """An evaluation source whose noise is ``make``(items, eta of the seed, seed)."""
        return evaluation.Source(
            name,
            lambda items, seed: make(items, draw(seed, len(items), self.shape), seed),
            backend=backend,
            controlled=controlled,
        )

    def evaluate(
        self,
        models: Any,
        seeds: Sequence[int],
        samples: int,
        permutations: int,
        names: Sequence[str] | None = None,
        controls: bool = True,
        extra: Sequence[evaluation.Source] = (),
    ) -> evaluation.Evaluation:
        """Every source (or those in ``names``) and the ``extra`` ones on ``samples`` items per seed, each against
        the Gaussian of its std (eta scaled to the source's std, same draws, measured per seed), with
        ``permutations`` swaps per test."""
        items = self.items(models, samples)
        chosen = [source for source in self.sources(models) if names is None or source.name in names] + list(extra)
        return evaluation.evaluate(
            chosen,
            self.renderer(models),
            self.scoring(models, items),
            items,
            seeds,
            baseline=GAUSSIAN,
            permutations=permutations,
            controls=controls,
            std_per_seed=True,
            progress=f"{self.name} sources",
        )

    def table(self, result: evaluation.Evaluation) -> str:
        """Markdown table: one row per source; its matched-std Gaussian control, the paired tests and on how many
        seeds the source's FD is below its control's."""
        lower = result.scoring.lower_is_better
        better = ", ".join(f"{m} {'lower' if m in lower else 'higher'}" for m in result.scoring.metrics)
        note = (
            f"{len(result.seeds)} seeds ({', '.join(map(str, result.seeds))}) x {result.items} samples, DDIM 25 steps, "
            f"guidance 1. {self.table_note(result)}Better: {better}. Mean ± std over seeds. Δ = source minus the "
            f"Gaussian noise scaled to the source's std (same draws); p: two-sided paired permutation test swapping "
            f"the two images of each item ({result.permutations} permutations), which treats the trained networks "
            f"and the draws as fixed; the seed counts show how often the sign holds on fresh draws."
        )
        return evaluation.table(result, digits=3, headline=("FD",), note=note)

    def bar_of(self, result: evaluation.Evaluation, name: str) -> str:
        """A source's bar: the prompt-mean row at std 1 or 0.5, whichever is nearer its noise std."""
        return PROMPT_MEAN if result.row(name).noise_std > 0.75 else HALF_PROMPT_MEAN

    def verdict(self, result: evaluation.Evaluation) -> str:
        """Every controlled source that is not a bar against its bar (when in the evaluation), on every one of the
        testbed's verdict metrics."""
        names = {row.name for row in result.rows}
        bars = {PROMPT_MEAN, HALF_PROMPT_MEAN}
        controlled = [row.name for row in result.rows if row.control is not None and row.name not in bars]
        pairs = [(name, self.bar_of(result, name)) for name in controlled if self.bar_of(result, name) in names]
        if not pairs:
            return ""
        return (
            "Each source against its bar (the Gaussian + prompt-mean shift row of its std) on FD and on the metrics "
            f"FD can be bought with ({', '.join(m for m in self.verdict_metrics if m != 'FD')}):\n\n"
            + evaluation.verdict(result, pairs, self.verdict_metrics)
        )

    def contrasts(self, result: evaluation.Evaluation) -> str:
        """The headline contrasts on FD with per-seed signs: each source against its matched Gaussian; the learned
        priors' share of the prompt-mean bar's gain; their gaps to both bars; the testbed's own; DPO's."""
        names = {r.name for r in result.rows}
        seeds = len(result.seeds)
        lines = ["Each source against the Gaussian of its own std (ΔFD < 0: the source is better):"]
        lines += [_line(row.name, result.vs_matched(row.name, "FD"), seeds) for row in result.rows if row.control is not None]
        priors = [name for name in (PRIOR_T1, PRIOR_T1 + SEED1, DPO_T1) if name in names and result.row(name).control is not None]
        if PROMPT_MEAN in names and result.row(PROMPT_MEAN).control is not None:
            bar = result.vs_matched(PROMPT_MEAN, "FD")["diff"]
            lines += [
                "",
                f"Share of the prompt-mean bar's gain over its matched Gaussian that the prior gets (bar: {bar:+.3f} FD):",
            ]
            lines += [f"- {name}: {result.vs_matched(name, 'FD')['diff'] / bar:.0%}" for name in priors]
        pairs = [
            (prior, bar)
            for bar, prior in ((PROMPT_MEAN, PRIOR_T1), (self.golden_row, PRIOR_T1), (HALF_PROMPT_MEAN, PRIOR_T05))
            for prior in (prior, prior + SEED1)
        ] + self.extra_contrasts(names)
        pairs = [(a, b) for a, b in pairs if a in names and b in names]
        if pairs:
            lines += ["", "Gaps (ΔFD > 0: the first is behind):"]
            lines += [_line(f"{a} − {b}", result.contrast(a, b, "FD"), seeds) for a, b in pairs]
        dpo = [(DPO_T1, bar) for bar in (PRIOR_T1, self.golden_row, PROMPT_MEAN) if DPO_T1 in names and bar in names]
        if dpo:
            lines += ["", "DPO (its reward model is not the judge: another architecture, seed and split of the digits):"]
            lines += [_line(f"{a} − {b}", result.contrast(a, b, "FD"), seeds) for a, b in dpo]
        return "\n".join(lines)

    def run(
        self,
        directory: Path | None,
        out: Path,
        seeds: Sequence[int] = DEFAULT_SEEDS,
        samples: int | None = None,
        permutations: int = PERMUTATIONS,
    ) -> dict[str, Path]:
        """Evaluate with the checkpoints of ``directory`` (default: the shipped ones) and write out/table.md,
        out/grid.png and out/plot.png (the plot only with matplotlib; without it the table says it was skipped)."""
        torch.manual_seed(0)
        directory = self.directory if directory is None else Path(directory)
        models = self.load(directory)
        result = self.evaluate(models, seeds, self.samples if samples is None else samples, permutations)
        sections = [self.table(result), self.verdict(result), self.contrasts(result), self.held_out_section(models, directory)]
        return evaluation.write_report(
            result,
            out,
            "table.md",
            [section for section in sections if section],
            self.grid(result),
            plot_metrics=self.plot_metrics,
            plot_title=f"{self.title}: each source vs the Gaussian scaled to its std",
            plot_note=f"mean ± std over {len(result.seeds)} seeds x {result.items} samples",
        )
