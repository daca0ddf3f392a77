"""Likelihood training: teacher-forced Gaussian NLL of a prior on a shard dataset, on the shared loop.

:func:`train_likelihood` is what ``noisear train`` runs: it refuses datasets whose starting noises repeat
across prompts, starts from a fresh or published prior (noisear.train.loop.initial_model), checks that the
dataset fits it and runs :class:`LikelihoodObjective` on noisear.train.loop.train; validation is
noisear.train.metrics.held_out_metrics on the held-out pairs.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from ..config import NoiseARConfig
from ..families import FAMILIES
from ..model import NoiseAR
from .data import Batch, BatchPlan, DatasetError, ShardDataset, known_start_noise, repeated_noises_message, shift_from_start
from .loop import LogProb, Range, Runtime, TrainConfig, initial_model, train
from .metrics import PromptMeanBaseline, held_out_metrics, nll_per_dim
from .runs import TrainingError


class LikelihoodObjective:
    """Teacher-forced Gaussian NLL in nats/dim on the training split of a shard dataset.

    Its loss is logged as ``train_loss`` (a training figure, never a result). With ``control_variate``
    the means learn from noise - starting noise (``mean_target`` of NoiseAR.log_prob): golden noise is its
    starting noise plus a small prompt-dependent shift, and the starting noise's patch is independent of the
    prompt and of the earlier patches, so the expected gradient is the same while the per-sample noise no
    longer swamps the shift; the loss value is still the NLL. It needs the dataset's seeds to say what the
    starting noise was (``known_start_noise``). Validation: :func:`held_out_metrics` on the held-out pairs,
    with the prompt-mean baseline fitted on the training split (single-size data only). A video family's one-frame
    noise [B, C, 1, H, W] trains an image prior as it is: NoiseAR.log_prob scores it as the image.
    """

    uses_dropout = True

    def __init__(
        self,
        dataset: ShardDataset,
        config: TrainConfig,
        baseline_ridge: float = 0.1,
        eval_batch_size: int = 64,
        control_variate: bool = False,
    ) -> None:
        if control_variate and not known_start_noise(dataset.info):
            raise DatasetError(
                f"the control variate needs each pair's starting noise, but {dataset.directory} "
                f"records seed_scheme {dataset.info.seed_scheme!r}; collect with the current "
                f"collectors or train without it (--control-variate off)"
            )
        problem = Range(0.0).problem(baseline_ridge)
        if problem:
            raise TrainingError(f"baseline_ridge (--baseline-ridge) {problem}")
        self.control_variate = control_variate
        self.dataset, self.eval_batch_size = dataset, eval_batch_size
        self.validation_fraction, self.seed_fraction = config.validation_fraction, config.validation_seed_fraction
        self.plan = BatchPlan(
            dataset, config.batch_size, config.seed, config.validation_fraction, seed_fraction=config.validation_seed_fraction
        )
        self.baseline_ridge = baseline_ridge
        self._baseline: PromptMeanBaseline | None = None

    def batch(self, step: int, runtime: Runtime) -> Batch:
        return self.plan.batch(step, runtime.rank, runtime.world).to(runtime.device)

    def loss(self, log_prob: LogProb, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mean_target = None
        if self.control_variate:
            mean_target = shift_from_start(batch)
        nll = nll_per_dim(log_prob(batch.text, batch.noise, batch.text_mask, mean_target), batch.noise[0].numel()).mean()
        return nll, {"train_loss": nll.item()}

    def validate(self, model: NoiseAR) -> dict[str, float]:
        if not any(len(rows) for rows in self.dataset.rows("validation", self.validation_fraction, self.seed_fraction)):
            return {}
        # the prompt-mean baseline regresses a fixed-size noise: only without aspect-ratio buckets
        if self._baseline is None and len(self.dataset.noise_shapes) == 1:
            self._baseline = PromptMeanBaseline(
                self.dataset, self.validation_fraction, self.baseline_ridge, seed_fraction=self.seed_fraction
            )
        return held_out_metrics(
            model, self.dataset, self.validation_fraction, self.seed_fraction, self._baseline, self.eval_batch_size
        )

    def state_dict(self) -> dict:
        return {}  # the data order is a function of (seed, step)

    def load_state_dict(self, state: dict) -> None:
        pass

    def identity(self) -> dict[str, Any]:
        return {
            "method": "likelihood",
            "data": self.dataset.fingerprint(),
            "control_variate": self.control_variate,
            "baseline_ridge": self.baseline_ridge,
        }


def check_compatible(model: NoiseAR, dataset: ShardDataset) -> None:
    """The dataset must be what the prior models: its family (when both name one), text width and longest text, and
    for every bucket the noise's channels and rank (a video prior reads [C, T, H, W], an image prior [C, H, W] or a
    one-frame [C, 1, H, W]) and the whole patches read of it (``dataset.read_shape``) within one decoding window (a
    1-D position table: its one size)."""
    c = model.config
    recorded = dataset.info.family
    if c.family_key and recorded and c.family_key != recorded:
        raise DatasetError(
            f"the prior serves {FAMILIES[c.family_key].title} models, but {dataset.directory} holds noise of a "
            f"{FAMILIES[recorded].title} model ({recorded}); train a prior of that family on it"
        )
    if dataset.text_width != c.text_dim:
        raise DatasetError(
            f"{dataset.directory} holds text {dataset.text_width} wide, but the prior reads text {c.text_dim} wide"
        )
    if c.text_tokens and dataset.text_tokens > c.text_tokens:
        raise DatasetError(
            f"{dataset.directory} holds a text of {dataset.text_tokens} tokens (padding left out), but the prior reads at "
            f"most {c.text_tokens}"
        )
    for shape in dataset.noise_shapes:
        read = dataset.read_shape(shape)
        problem = noise_problem(c, read)
        if problem:
            part = f" (read as its top-left {list(read)})" if read != shape else ""
            raise DatasetError(f"{dataset.directory} holds noise {list(shape)}{part}, but {problem}")


def noise_problem(c: NoiseARConfig, shape: tuple[int, ...]) -> str | None:
    """Why the prior of config ``c`` cannot be trained on noise of ``shape`` (C, H, W) or (C, T, H, W), or None."""
    if c.positions == "table":
        if tuple(shape) != (c.channels, c.latent_height, c.latent_width):
            return (
                f"this prior (a 1-D position table) models noise {[c.channels, c.latent_height, c.latent_width]} only; "
                f"several sizes (buckets) need a prior with positions='2d'"
            )
        return None
    if shape[0] != c.channels:
        return f"the prior models {c.channels}-channel noise"
    if c.video and len(shape) != 4:
        return "the prior is a video prior: it models [C, T, H, W] noise"
    if not c.video and len(shape) == 4 and shape[1] != 1:
        return f"the prior is an image prior: it models [C, H, W] noise, not videos of {shape[1]} frames"
    size = shape[1:] if c.video else shape[-2:]
    if any(n % p for n, p in zip(size, c.patch)):
        return f"the prior models whole {' x '.join(map(str, c.patch))}-cell patches"
    if c.plan(*size).mode == "sliding window":
        window = f"{c.window} patches a side" + (f", {c.window_frames} patch frames" if c.video and c.window_frames else "")
        return f"the prior's decoding window ({window}) does not hold it; training reads whole windows"
    return None


def refuse_repeated_noises(dataset: ShardDataset) -> None:
    """Raise when starting noises repeat across prompts (see ShardDataset.seed_counts)."""
    seeds = dataset.seed_counts()
    if seeds["shared_seeds"]:
        raise DatasetError(
            f"{dataset.directory}: {repeated_noises_message(seeds)} To train on it anyway (e.g. to "
            f"reproduce an old result), pass --allow-repeated-noises (allow_repeated_noises=True) and "
            f"hold out seeds with --validation-seed-fraction so that validation noises are unseen."
        )


def train_likelihood(
    data: str | os.PathLike | ShardDataset,
    config: TrainConfig,
    model_config: NoiseARConfig | None = None,
    init: str | os.PathLike | None = None,
    baseline_ridge: float = 0.1,
    allow_repeated_noises: bool = False,
    control_variate: bool | None = None,
    prepare: Callable[[NoiseAR], NoiseAR] | None = None,
) -> NoiseAR:
    """Likelihood training on a shard directory (or an open ShardDataset), from scratch (model_config; for a new
    prior of a dataset: noisear.train.design.design_prior) or from a checkpoint (init). The dataset must fit the
    prior (:func:`check_compatible`). A dataset whose starting noises repeat across prompts is refused unless
    ``allow_repeated_noises``. ``control_variate`` (see LikelihoodObjective): None = when the dataset's seeds say
    what the starting noises were. A bucket that is not whole patches of the prior is trained on its top-left whole
    patches (ShardDataset.in_whole_patches), the part the sampler's patches cover. ``prepare`` changes the starting
    model before training (the toy's baseline without autoregression cuts its prefix)."""
    dataset = data if isinstance(data, ShardDataset) else ShardDataset(data)
    if not allow_repeated_noises:
        refuse_repeated_noises(dataset)
    if control_variate is None:
        control_variate = known_start_noise(dataset.info)
    model = initial_model(model_config, init, config.seed)
    if prepare is not None:
        model = prepare(model)
    dataset = dataset.in_whole_patches(model.config.patch)
    check_compatible(model, dataset)
    objective = LikelihoodObjective(dataset, config, baseline_ridge, control_variate=control_variate)
    return train(model, objective, config, inputs=[*dataset.input_paths(), *([init] if init is not None else [])])
