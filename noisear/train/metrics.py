"""Held-out metrics of a prior and the baselines they are measured against.

Likelihood training validates with :func:`held_out_metrics` (printed by :func:`describe_held_out`);
``noisear eval`` draws its "Gaussian + prompt-mean shift" source from :class:`PromptMeanBaseline`;
the toy demo scores fresh golden pairs with :func:`nll_per_dim` and :func:`standard_normal_nll_per_dim`, and
measures what autoregression adds against :class:`PromptCovarianceBaseline` (a full-covariance Gaussian per
prompt, no autoregression).
Likelihoods are in nats per dimension.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..model import NoiseAR, standard_normal
from .data import Batch, DatasetError, ShardDataset, known_start_noise, shift_from_start, validation_prompt


def nll_per_dim(log_prob: torch.Tensor, dims: int) -> torch.Tensor:
    """Negative log-likelihood in nats per dimension, [B] -> [B]."""
    return -log_prob / dims


def masked_mean_pool(text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """[B,T,D], [B,T] -> [B,D]: mean over real tokens (padding of any length leaves it unchanged)."""
    weights = text_mask.to(text.dtype)[..., None]
    return (text * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class PromptMeanBaseline:
    """Gaussian whose mean depends on the prompt only: N(W^T [pool(text), 1], diag(var)).

    W is a ridge regression from the masked mean-pooled prompt embedding to the prompt-mean shift,
    fitted on the training split (streamed: accumulates X^T X and X^T Y, memory (D+1) x C*H*W
    float64; video noise is flattened the same way, C*T*H*W). The target is noise - starting noise
    when the dataset's seeds say what the starting noise was (it has mean 0, so this estimates the
    noise's mean with far less variance), else the noise itself. ``var`` is the per-dimension residual
    variance of the noise on the training split (a second pass; fitted, not unit). ``ridge`` is
    relative: lambda = ridge * mean diagonal of X^T X. It generalises to unseen (validation) prompts,
    which a table of per-prompt means could not.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        validation_fraction: float,
        ridge: float = 0.1,
        batch_size: int = 256,
        seed_fraction: float = 0.0,
    ) -> None:
        width = dataset.item_shapes["text"][1] + 1
        dims = math.prod(dataset.read_shape(dataset.item_shapes["noise"]))
        self.uses_start_noise = known_start_noise(dataset.info)
        gram = torch.zeros(width, width, dtype=torch.float64)
        cross = torch.zeros(width, dims, dtype=torch.float64)
        count = 0
        for batch in dataset.iterate("train", validation_fraction, batch_size, seed_fraction):
            x = self.features(batch.text, batch.text_mask)
            target = shift_from_start(batch) if self.uses_start_noise else batch.noise
            gram += x.T @ x
            cross += x.T @ target.flatten(1).double()
            count += len(batch)
        if count == 0:
            raise DatasetError("the training split is empty; cannot fit the prompt-mean baseline")
        penalty = ridge * gram.diagonal()[:-1].mean() * torch.eye(width, dtype=torch.float64)
        penalty[-1, -1] = 0.0  # the intercept is not shrunk
        self.normal_matrix = gram + penalty  # the regression's (X^T X + ridge), for regressions on the same features
        self.weight = torch.linalg.solve(self.normal_matrix, cross)
        squares = torch.zeros(dims, dtype=torch.float64)
        for batch in dataset.iterate("train", validation_fraction, batch_size, seed_fraction):
            squares += (batch.noise.flatten(1).double() - self.mean(batch.text, batch.text_mask)).pow(2).sum(0)
        self.var = (squares / count).clamp_min(1e-6)

    def tensors(self) -> dict[str, torch.Tensor]:
        """What :meth:`from_tensors` rebuilds the baseline from (to ship it without its dataset)."""
        return {"weight": self.weight, "var": self.var}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "PromptMeanBaseline":
        """A fitted baseline from :meth:`tensors` (mean and variance only)."""
        baseline = cls.__new__(cls)
        baseline.weight, baseline.var = tensors["weight"].double(), tensors["var"].double()
        return baseline

    @staticmethod
    def features(text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """[B,T,D], [B,T] -> [B, D+1] float64: pooled embedding and a 1 for the intercept."""
        pooled = masked_mean_pool(text.cpu().double(), text_mask.cpu())
        return torch.cat([pooled, torch.ones(len(pooled), 1, dtype=torch.float64)], dim=1)

    def mean(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """[B, C*H*W] float64: the baseline's mean noise (the predicted prompt-mean shift) for the prompts."""
        return self.features(text, text_mask) @ self.weight

    def nll_per_dim(self, batch: Batch) -> torch.Tensor:
        """[B] nats per dimension of the batch's noise under this baseline."""
        y = batch.noise.cpu().flatten(1).double()
        mean = self.mean(batch.text, batch.text_mask)
        return 0.5 * ((y - mean) ** 2 / self.var + self.var.log() + math.log(2 * math.pi)).mean(1)


class PromptCovarianceBaseline(PromptMeanBaseline):
    """Gaussian with a full covariance that depends on the prompt, and no autoregression:
    N(mean(text), Sigma(text)), mean as :class:`PromptMeanBaseline`.

    Sigma(text) is a ridge regression of the residual outer products (noise - mean)(noise - mean)^T on the same
    features (pooled embedding and 1; with one-hot prompts: each prompt's own covariance), shrunk towards its
    diagonal by ``shrinkage`` and its eigenvalues kept at least ``floor`` (a regression may leave an unseen prompt
    an indefinite matrix). Memory (D+1) x (C*H*W)^2 float64: for small noises (the toy testbeds), not latents.

    ``mean_of`` (text [B,T,D], mask [B,T]) -> [B, C*H*W] replaces the linear mean by another model's (a network's
    mean without autoregression, say): the covariance is then fitted around it.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        validation_fraction: float,
        ridge: float = 0.1,
        batch_size: int = 256,
        seed_fraction: float = 0.0,
        shrinkage: float = 0.1,
        floor: float = 1e-2,
        mean_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        self.mean_of = None  # the linear mean and its variance first (the prompt-mean baseline's fit)
        super().__init__(dataset, validation_fraction, ridge, batch_size, seed_fraction)
        self.shrinkage, self.floor, self.mean_of = shrinkage, floor, mean_of
        dims = self.weight.shape[1]
        cross = torch.zeros(self.weight.shape[0], dims, dims, dtype=torch.float64)
        for batch in dataset.iterate("train", validation_fraction, batch_size, seed_fraction):
            x = self.features(batch.text, batch.text_mask)
            residual = batch.noise.flatten(1).double() - self.mean(batch.text, batch.text_mask)
            cross += ((x[:, :, None] * residual[:, None, :]).flatten(1).T @ residual).view_as(cross)  # sum_b x_k r_i r_j
        self.covariance_weight = torch.linalg.solve(self.normal_matrix, cross.flatten(1)).view_as(cross)

    def mean(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """[B, C*H*W] float64: the linear mean, or ``mean_of``'s."""
        if self.mean_of is None:
            return super().mean(text, text_mask)
        return self.mean_of(text, text_mask).double().cpu().flatten(1)

    def covariance(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """[B, C*H*W, C*H*W] float64: the baseline's covariance for each prompt (symmetric positive definite)."""
        raw = torch.einsum("bk,kij->bij", self.features(text, text_mask), self.covariance_weight)
        raw = 0.5 * (raw + raw.transpose(1, 2))
        diagonal = torch.diag_embed(raw.diagonal(dim1=1, dim2=2))
        shrunk = (1 - self.shrinkage) * raw + self.shrinkage * diagonal
        values, vectors = torch.linalg.eigh(shrunk)
        return vectors @ torch.diag_embed(values.clamp_min(self.floor)) @ vectors.transpose(1, 2)

    def _per_prompt(self, text: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean [P, d], Cholesky factor of the covariance [P, d, d], prompt of each item [B]) for the P distinct
        prompts of a batch: one d x d matrix per prompt, not per item."""
        keys = torch.cat([text.cpu().flatten(1).double(), text_mask.cpu().double()], dim=1)
        distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
        first = torch.zeros(len(distinct), dtype=torch.long).scatter_(0, inverse, torch.arange(len(inverse)))
        text, text_mask = text.cpu()[first], text_mask.cpu()[first]
        return self.mean(text, text_mask), torch.linalg.cholesky(self.covariance(text, text_mask)), inverse

    def nll_per_dim(self, batch: Batch) -> torch.Tensor:
        """[B] nats per dimension of the batch's noise under this baseline."""
        mean, factor, prompt = self._per_prompt(batch.text, batch.text_mask)
        return gaussian_nll_per_dim(batch.noise.cpu().flatten(1).double(), mean, factor, prompt)

    def sample(self, text: torch.Tensor, text_mask: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """eps [B,C,H,W] standard normal -> mean + L eps with L L^T = Sigma (Cholesky), float32 [B,C,H,W]."""
        mean, factor, prompt = self._per_prompt(text, text_mask)
        noise = mean[prompt] + torch.einsum("bij,bj->bi", factor[prompt], eps.flatten(1).double())
        return noise.float().view_as(eps)


def gaussian_nll_per_dim(y: torch.Tensor, mean: torch.Tensor, factor: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[B] nats per dimension of y [B,d] under N(mean[g], L[g] L[g]^T) for its group g = group[b]: mean [G,d],
    Cholesky factors L [G,d,d] (float64)."""
    z = torch.zeros_like(y)
    for g in range(len(mean)):
        rows = group == g
        z[rows] = torch.linalg.solve_triangular(factor[g], (y[rows] - mean[g]).T, upper=False).T
    log_det = 2 * factor.diagonal(dim1=1, dim2=2).log().sum(1)
    return 0.5 * (z.square().sum(1) + log_det[group]) / y.shape[1] + 0.5 * math.log(2 * math.pi)


def standard_normal_nll_per_dim(noise: torch.Tensor) -> torch.Tensor:
    """[B] nats per dimension under N(0, I)."""
    return 0.5 * (noise.flatten(1).double() ** 2 + math.log(2 * math.pi)).mean(1)


@torch.no_grad()
def held_out_metrics(
    model: NoiseAR,
    dataset: ShardDataset,
    validation_fraction: float,
    seed_fraction: float = 0.0,
    baseline: PromptMeanBaseline | None = None,
    batch_size: int = 64,
    max_prompts: int = 64,
) -> dict[str, float]:
    """What a prior has learned, measured on the validation split only (unseen prompts and/or unseen noises).

    - ``val_nll`` (nats/dim) next to ``nll_standard_normal`` (N(0,I)) and ``nll_prompt_mean`` (``baseline``,
      when given), and ``gap_vs_*`` = baseline - prior (positive: the prior is better);
      ``val_nll_unseen_prompts`` / ``val_nll_seen_prompts``: the same by kind of held-out pair, with counts;
    - calibration: ``sample_std_t1``, the std of T=1 samples, against ``data_std``, the validation noise's std;
    - ``mean_shift_cosine``: cosine between the prior's T=0 noise and the data's prompt-mean shift (per
      validation prompt, the mean of noise - starting noise when the seeds say what the starting noise was,
      else the mean noise), over the first ``max_prompts`` prompts; ``mean_shift_cosine_prompt_mean`` is the
      baseline's. Few pairs per prompt make the shift estimate noisy, so both cosines stay well below 1.
    Empty when the validation split is empty.
    """
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    counts = {"val_pairs": 0, "val_pairs_unseen_prompts": 0}
    data_sum = data_squares = data_values = 0.0
    prompts: dict[tuple, dict] = {}  # (prompt, shape) -> first text, mask and the summed shift
    known_start = known_start_noise(dataset.info)

    def add(name: str, values: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(values.double().sum())

    for batch in dataset.iterate("validation", validation_fraction, batch_size, seed_fraction):
        shape = tuple(batch.noise.shape[1:])
        noise = batch.noise.to(device)
        nll = nll_per_dim(model.log_prob(batch.text.to(device), noise, batch.text_mask.to(device)), batch.noise[0].numel()).cpu()
        unseen = torch.tensor([validation_prompt(int(p), validation_fraction) for p in batch.prompt_index])
        add("val_nll", nll)
        add("val_nll_unseen_prompts", nll[unseen])
        add("val_nll_seen_prompts", nll[~unseen])
        add("nll_standard_normal", standard_normal_nll_per_dim(batch.noise))
        if baseline is not None:
            add("nll_prompt_mean", baseline.nll_per_dim(batch))
        counts["val_pairs"] += len(batch)
        counts["val_pairs_unseen_prompts"] += int(unseen.sum())
        data_sum += float(batch.noise.double().sum())
        data_squares += float(batch.noise.double().pow(2).sum())
        data_values += batch.noise.numel()
        shift = shift_from_start(batch) if known_start else batch.noise
        for i, p in enumerate(batch.prompt_index.tolist()):
            key = (p, shape)
            if key not in prompts and len(prompts) < max_prompts:
                prompts[key] = {
                    "text": batch.text[i],
                    "mask": batch.text_mask[i],
                    "count": 0,
                    "shift": torch.zeros(shape, dtype=torch.float64),
                }
            if key in prompts:
                prompts[key]["shift"] += shift[i].double()
                prompts[key]["count"] += 1
    if counts["val_pairs"] == 0:
        return {}
    seen = counts["val_pairs"] - counts["val_pairs_unseen_prompts"]
    metrics = {"val_nll": sums["val_nll"] / counts["val_pairs"]}
    if counts["val_pairs_unseen_prompts"]:
        metrics["val_nll_unseen_prompts"] = sums["val_nll_unseen_prompts"] / counts["val_pairs_unseen_prompts"]
    if seen:
        metrics["val_nll_seen_prompts"] = sums["val_nll_seen_prompts"] / seen
    baselines = {name: sums[name] / counts["val_pairs"] for name in ("nll_standard_normal", "nll_prompt_mean") if name in sums}
    metrics.update(baselines)
    metrics.update({f"gap_vs_{name[4:]}": value - metrics["val_nll"] for name, value in baselines.items()})
    data_mean = data_sum / data_values
    metrics["data_std"] = math.sqrt(max(data_squares / data_values - data_mean**2, 0.0))
    samples, dots, norms = [], {"prior": 0.0, "prompt_mean": 0.0}, {"prior": 0.0, "prompt_mean": 0.0, "data": 0.0}
    for (_, shape), item in prompts.items():
        text, mask = item["text"][None].to(device), item["mask"][None].to(device)
        generator = torch.Generator().manual_seed(len(samples))
        samples.append(
            model.sample(text, standard_normal((1, *shape), generator).to(device), temperature=1.0, text_mask=mask)
            .double()
            .cpu()
            .flatten()
        )
        shift = (item["shift"] / item["count"]).flatten()
        means = {
            "prior": model.sample(text, torch.zeros(1, *shape, device=device), temperature=0.0, text_mask=mask)
            .double()
            .cpu()
            .flatten()
        }
        if baseline is not None:
            means["prompt_mean"] = baseline.mean(item["text"][None], item["mask"][None])[0]
        norms["data"] += float(shift @ shift)
        for name, mean in means.items():
            dots[name] += float(mean @ shift)
            norms[name] += float(mean @ mean)
    metrics["sample_std_t1"] = float(torch.cat(samples).std())
    for name, key in (("prior", "mean_shift_cosine"), ("prompt_mean", "mean_shift_cosine_prompt_mean")):
        if norms[name] > 0 and norms["data"] > 0:
            metrics[key] = dots[name] / math.sqrt(norms[name] * norms["data"])
    metrics.update({k: float(v) for k, v in counts.items()})
    return metrics


def describe_held_out(metrics: dict[str, float]) -> str:
    """Readable lines of :func:`held_out_metrics` (what ``noisear train`` prints)."""
    if not metrics:
        return (
            "no held-out pairs (every prompt and seed was trained on, or every held-out pair shares a noise with "
            "training): nothing to report. The training loss is not a result; set --validation-fraction and/or "
            "--validation-seed-fraction."
        )
    lines = [
        f"held-out pairs: {int(metrics['val_pairs'])} ({int(metrics['val_pairs_unseen_prompts'])} of unseen "
        f"prompts), none of their starting noises trained on",
        f"NLL nats/dim: prior {metrics['val_nll']:.5f}, N(0,I) {metrics['nll_standard_normal']:.5f}"
        + (f", prompt-mean baseline {metrics['nll_prompt_mean']:.5f}" if "nll_prompt_mean" in metrics else ""),
    ]
    for group in ("unseen_prompts", "seen_prompts"):
        if f"val_nll_{group}" in metrics:
            lines.append(f"  prior on {group.replace('_', ' ')}: {metrics[f'val_nll_{group}']:.5f}")
    names = {"gap_vs_standard_normal": "vs N(0,I)", "gap_vs_prompt_mean": "vs prompt-mean baseline"}
    lines.append(
        "gap (baseline - prior, > 0: the prior is better): "
        + ", ".join(f"{names[k]} {v:+.5f}" for k, v in metrics.items() if k in names)
    )
    lines.append(f"calibration: sample std at T=1 {metrics['sample_std_t1']:.4f}, data std {metrics['data_std']:.4f}")
    if "mean_shift_cosine" in metrics:
        lines.append(
            f"cosine of the mean (T=0) with the data's prompt-mean shift: prior {metrics['mean_shift_cosine']:+.4f}"
            + (
                f", prompt-mean baseline {metrics['mean_shift_cosine_prompt_mean']:+.4f}"
                if "mean_shift_cosine_prompt_mean" in metrics
                else ""
            )
        )
    return "\n".join(lines)
