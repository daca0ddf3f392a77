"""Honest comparison of noise sources on the same prompts and seeds.

A *source* makes noise for a batch of prompts and one seed per item: (PromptSet, seeds) ->
[B,C,H,W]. A *backend* turns noise into images: (noise, PromptSet) -> [B,3,h,w] in [0,1]. A
*scorer* scores images: (images, PromptSet) -> [B]. For every seed and source the same prompts
are rendered and scored; every source is also compared with plain Gaussian noise scaled to that
source's standard deviation (a lower-variance start alone changes alignment and diversity, so a
claimed gain has to beat it). That matched contrast is the headline: its mean difference, a paired
sign-flip permutation test on the (seed, prompt) pairs, and the per-seed view (on how many
evaluation seeds the source beats its matched Gaussian; the item test treats one set of draws as
fixed, the seeds show whether the gain holds draw after draw). The same test against the plain
baseline, mean +- std over seeds, a markdown table, a labelled image grid and a plot of each scorer
for each source against its std-matched Gaussian (noisear.figures) complete the report. A
"Gaussian + prompt-mean shift" source (:func:`prompt_mean_source`) is the bar a learned prior must
clear: it adds the prompt's mean shift to the seed's Gaussian noise, with no AR model.

Real-model scorers (HPSv2, ImageReward, PickScore, CLIP score) are lazy adapters that take local
weight paths and never download.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..figures import PLOT_SKIPPED, Comparison, comparison_plot, labelled_grid
from ..golden import Denoiser, GoldenConfig, Schedule, golden_noise
from ..mixing import blend
from ..model import NoiseAR, standard_normal
from .data import PromptSet
from .trainer import PromptMeanBaseline

NoiseSource = Callable[[PromptSet, Sequence[int]], torch.Tensor]
Backend = Callable[[torch.Tensor, PromptSet], torch.Tensor]
ImageScorer = Callable[[torch.Tensor, PromptSet], torch.Tensor]


# Sources -----------------------------------------------------------------------------------------
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


def prompt_mean_source(baseline: "PromptMeanBaseline", shape: Sequence[int]) -> NoiseSource:
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


# Statistics --------------------------------------------------------------------------------------
def paired_test(a: np.ndarray, b: np.ndarray, permutations: int = 10000, seed: int = 0) -> dict[str, float]:
    """Paired comparison of scores a and b on the same items: mean difference a - b, paired t statistic,
    and the two-sided p-value of a sign-flip permutation test (exact for up to 16 pairs)."""
    diff = np.asarray(a, dtype=np.float64).ravel() - np.asarray(b, dtype=np.float64).ravel()
    n = len(diff)
    if n < 2:
        raise ValueError("a paired test needs at least two pairs")
    sd = diff.std(ddof=1)
    t = diff.mean() / (sd / math.sqrt(n)) if sd > 0 else (0.0 if diff.mean() == 0 else math.copysign(math.inf, diff.mean()))
    exact = n <= 16
    if exact:  # every sign pattern
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(permutations, n))
    extreme = int((np.abs((signs * diff).mean(axis=1)) >= abs(diff.mean()) - 1e-12).sum())
    p_value = extreme / len(signs) if exact else (extreme + 1) / (len(signs) + 1)
    return {"mean_diff": float(diff.mean()), "t": float(t), "p_value": p_value, "n": n}


def contrast(a: np.ndarray, b: np.ndarray, permutations: int = 10000) -> dict[str, float]:
    """Scores a and b [seeds, prompts] on the same items: :func:`paired_test` on the items, plus the per-seed
    view: ``seed_diffs`` (mean over prompts of a - b per seed), ``seeds_better`` (how many are > 0) and ``seeds``."""
    per_seed = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean(axis=1)
    return {
        **paired_test(a, b, permutations),
        "seed_diffs": per_seed.tolist(),
        "seeds_better": int((per_seed > 0).sum()),
        "seeds": len(per_seed),
    }


@dataclass
class EvalResult:
    """scores[scorer][source] = [seeds, prompts]; noise_std[source]; tests[scorer][source] vs baseline;
    matched[scorer][source]: :func:`contrast` of the source against its std-matched Gaussian."""

    seeds: list[int]
    prompts: int
    baseline: str
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    noise_std: dict[str, float] = field(default_factory=dict)
    tests: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    matched: dict[str, dict[str, dict]] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # first seed's images per source

    def table(self) -> str:
        """Markdown: one row per source; per scorer mean +- std over seeds, the contrast with the source's
        std-matched Gaussian (difference, p, seeds where the source is better) and the paired test vs baseline."""
        scorers = list(self.scores)
        header = (
            "| source | noise std | "
            + " | ".join(
                f"{s} (mean ± std over seeds) | Δ vs matched Gaussian, p, seeds better | Δ vs {self.baseline}, p" for s in scorers
            )
            + " |"
        )
        lines = [header, "|" + "---|" * (2 + 3 * len(scorers))]
        for source in self.noise_std:
            cells = [source, f"{self.noise_std[source]:.4f}"]
            for scorer in scorers:
                per_seed = self.scores[scorer][source].mean(axis=1)
                cells.append(f"{per_seed.mean():.4f} ± {per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0:.4f}")
                matched = self.matched.get(scorer, {}).get(source)
                cells.append(
                    "—"
                    if matched is None
                    else f"{matched['mean_diff']:+.4f}, p={matched['p_value']:.3g}, {matched['seeds_better']}/{matched['seeds']}"
                )
                test = self.tests[scorer].get(source)
                cells.append("—" if test is None else f"{test['mean_diff']:+.4f}, p={test['p_value']:.3g}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"\n{len(self.seeds)} seeds x {self.prompts} prompts. Matched Gaussian: the `{self.baseline}` "
            f"draws of the same seeds scaled to the source's std. p: two-sided paired sign-flip permutation "
            f"test on the (seed, prompt) pairs; seeds better: evaluation seeds on which the source's mean "
            f"over prompts beats its matched Gaussian's."
        )
        return "\n".join(lines)


def evaluate(
    sources: dict[str, NoiseSource],
    backend: Backend,
    scorers: dict[str, ImageScorer],
    prompts: PromptSet,
    seeds: Sequence[int],
    baseline: str = "gaussian",
    std_matched: bool = True,
    permutations: int = 10000,
) -> EvalResult:
    """Render and score every source on every (seed, prompt); add std-matched Gaussian controls.

    Item (seed s, prompt p) uses seed s for every source, so all sources start from the same draws.
    With ``std_matched`` each non-baseline source X gets a control "gaussian@std(X)": the baseline
    source's noise (same seeds) scaled so that its measured std equals X's measured std.
    """
    if baseline not in sources:
        raise ValueError(f"baseline {baseline!r} is not one of the sources {list(sources)}")
    sources = dict(sources)
    result = EvalResult(seeds=list(seeds), prompts=len(prompts), baseline=baseline)
    noises = {name: [source(prompts, [s] * len(prompts)) for s in seeds] for name, source in sources.items()}
    for name in list(sources):
        result.noise_std[name] = float(torch.stack(noises[name]).double().std())
        if std_matched and name != baseline:
            control = control_name(baseline, name)
            factor = result.noise_std[name] / float(torch.stack(noises[baseline]).double().std())
            noises[control] = [noise * factor for noise in noises[baseline]]
            result.noise_std[control] = float(torch.stack(noises[control]).double().std())
    for scorer in scorers:
        result.scores[scorer] = {}
    for name, per_seed in noises.items():
        for seed_position, noise in enumerate(per_seed):
            images = backend(noise, prompts)
            if seed_position == 0:
                result.images[name] = images.detach().cpu()
            for scorer_name, scorer in scorers.items():
                values = scorer(images, prompts).detach().double().cpu().numpy()
                result.scores[scorer_name].setdefault(name, np.zeros((len(seeds), len(prompts))))[seed_position] = values
    for scorer_name, per_source in result.scores.items():
        result.tests[scorer_name] = {
            name: paired_test(values, per_source[baseline], permutations)
            for name, values in per_source.items()
            if name != baseline
        }
        result.matched[scorer_name] = {
            name: contrast(per_source[name], per_source[control_name(baseline, name)], permutations)
            for name in sources
            if control_name(baseline, name) in per_source
        }
    return result


# Figures -----------------------------------------------------------------------------------------
def control_name(baseline: str, source: str) -> str:
    """Name of the baseline noise scaled to ``source``'s std."""
    return f"{baseline}@std({source})"


def comparisons(result: EvalResult) -> dict[str, list[Comparison]]:
    """Per scorer, each source (controls excepted) with mean and std over seeds, and those of its control."""

    def stats(values: np.ndarray) -> tuple[float, float]:
        per_seed = values.mean(axis=1)
        return float(per_seed.mean()), float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0

    panels = {}
    for scorer, per_source in result.scores.items():
        panels[scorer] = []
        for name, values in per_source.items():
            if name.startswith(f"{result.baseline}@std("):
                continue
            control = per_source.get(control_name(result.baseline, name))
            panels[scorer].append(Comparison(name, *stats(values), *(stats(control) if control is not None else (None, None))))
    return panels


def save_report(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """Write results.md (the table), grid.png (a labelled row per source: the first seed's images) and plot.png
    (each scorer per source against its std-matched Gaussian; only with matplotlib, else results.md says so)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": out_dir / "results.md", "grid": out_dir / "grid.png"}
    labelled_grid(list(result.images.items()), title=f"seed {result.seeds[0]}: one image per prompt").save(paths["grid"])
    plot = comparison_plot(
        out_dir / "plot.png",
        comparisons(result),
        title=f"Each source vs {result.baseline} noise scaled to its std",
        note=f"mean ± std over {len(result.seeds)} seeds of the mean over {result.prompts} prompts",
    )
    if plot:
        paths["plot"] = plot
    figures = "plot.png: each scorer per source against its std-matched Gaussian" if plot else PLOT_SKIPPED
    paths["table"].write_text(f"{result.table()}\n\n{figures}\n", encoding="utf-8")
    return paths


# Real-model scorers (lazy, local weights only) ----------------------------------------------------
def clip_pixels(images: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> CLIP pixel_values per a transformers preprocessor_config.json: bicubic resize of the
    shortest edge (or to height x width), centre crop, (x - image_mean) / image_std. Plain torch, no imaging library."""
    size, crop = settings.get("size", 224), settings.get("crop_size", 224)
    height, width = images.shape[-2:]
    if isinstance(size, dict) and "height" in size:
        resized = (size["height"], size["width"])
    else:
        edge = size["shortest_edge"] if isinstance(size, dict) else size
        resized = (round(height * edge / min(height, width)), round(width * edge / min(height, width)))
    pixels = torch.nn.functional.interpolate(images.clamp(0, 1), size=resized, mode="bicubic", antialias=True).clamp(0, 1)
    crop_height, crop_width = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])
    top, left = (resized[0] - crop_height) // 2, (resized[1] - crop_width) // 2
    pixels = pixels[..., top : top + crop_height, left : left + crop_width]
    mean = torch.tensor(settings.get("image_mean", (0.48145466, 0.4578275, 0.40821073)))[:, None, None]
    std = torch.tensor(settings.get("image_std", (0.26862954, 0.26130258, 0.27577711)))[:, None, None]
    return (pixels - mean.to(pixels)) / std.to(pixels)


def clip_scorer(model_dir: str | Path, scale: float | None = None, device: str = "cpu") -> ImageScorer:
    """CLIP score (``scale`` * cosine clipped at 0, usually 100) or PickScore (scale None: the model's logit_scale
    * cosine) from a local transformers CLIPModel folder with its tokenizer and preprocessor_config.json (e.g.
    openai/clip-vit-large-patch14 or yuvalkirstain/PickScore_v1, downloaded by you). Prompts need ``strings``."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).to(device).train(False)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    settings_path = Path(model_dir) / "preprocessor_config.json"
    if not settings_path.is_file():
        raise FileNotFoundError(
            f"{settings_path} is missing: the CLIP folder needs the image preprocessor settings "
            "(copy preprocessor_config.json from the model's processor)"
        )
    settings = json.loads(settings_path.read_text(encoding="utf-8"))

    @torch.no_grad()
    def score(images: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
        if not prompts.strings:
            raise ValueError("CLIP-based scorers need the prompt texts (PromptSet.strings)")
        tokens = tokenizer(
            list(prompts.strings),
            padding=True,
            truncation=True,
            return_tensors="pt",
            max_length=model.config.text_config.max_position_embeddings,
        ).to(device)
        image = model.get_image_features(pixel_values=clip_pixels(images.float().to(device), settings))
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        image, text = (getattr(x, "pooler_output", x) for x in (image, text))  # transformers 5 may return outputs
        cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
        return (scale * cosine.clamp_min(0) if scale is not None else model.logit_scale.exp() * cosine).cpu()

    return score


def hpsv2_scorer(checkpoint: str | Path, device: str = "cpu") -> ImageScorer:
    """HPSv2 (open_clip ViT-H-14 with the HPS checkpoint you downloaded); needs ``pip install open_clip_torch``."""
    try:
        import open_clip
    except ImportError as err:
        raise ImportError("the HPSv2 scorer needs open_clip: pip install open_clip_torch") from err
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-H-14", pretrained=None, device=device)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("state_dict", state))
    model.train(False)
    tokenizer = open_clip.get_tokenizer("ViT-H-14")
    size = model.visual.image_size
    mean = torch.tensor(model.visual.image_mean or (0.48145466, 0.4578275, 0.40821073))[:, None, None]
    std = torch.tensor(model.visual.image_std or (0.26862954, 0.26130258, 0.27577711))[:, None, None]

    @torch.no_grad()
    def score(images: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
        pixels = torch.nn.functional.interpolate(images.clamp(0, 1), size=size, mode="bicubic", antialias=True)
        image = model.encode_image(((pixels - mean) / std).to(device), normalize=True)
        text = model.encode_text(tokenizer(list(prompts.strings)).to(device), normalize=True)
        return (100 * (image * text).sum(-1)).cpu()

    return score


def image_reward_scorer(checkpoint: str | Path, med_config: str | Path, device: str = "cpu") -> ImageScorer:
    """ImageReward from your local ImageReward.pt and med_config.json; needs ``pip install image-reward``."""
    try:
        import ImageReward
        from PIL import Image
    except ImportError as err:
        raise ImportError("the ImageReward scorer needs: pip install image-reward pillow") from err
    model = ImageReward.load(str(checkpoint), device=device, med_config=str(med_config))

    @torch.no_grad()
    def score(images: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
        pictures = [
            Image.fromarray((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for image in images.cpu()
        ]
        return torch.tensor([float(model.score(text, [picture])) for text, picture in zip(prompts.strings, pictures)])

    return score
