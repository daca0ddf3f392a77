"""The one training loop (likelihood training and DPO share it) and likelihood training.

`train(model, objective, config)` runs AdamW with linear warm-up and cosine decay, gradient
clipping, optional EMA, bf16 autocast on CUDA, a tqdm bar, a jsonl log, periodic checkpoints
that resume exactly, and DDP under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPU).
What differs between likelihood training and DPO is an :class:`Objective`: which batch a step
uses and which loss it computes from log-probabilities.

Files in ``config.out_dir``: ``checkpoint.pt`` (resume state, torch.save of tensors and plain
dicts, read back with weights_only=True), ``log.jsonl`` and ``prior.safetensors`` (the final
prior, EMA weights when EMA is on, loadable with ``noisear.load``).

Interrupts: Ctrl-C (SIGINT) finishes the current step, saves a checkpoint at that step boundary and
raises KeyboardInterrupt, so resuming gives bitwise the weights of an uninterrupted run (a second
Ctrl-C stops at once, without saving; like a kill, that resumes from the last checkpoint). On
resume ``log.jsonl`` is cut back to what it held when the checkpoint was saved (a run that starts
from step 0 starts an empty log), so no record repeats.

DDP: global batch ``batch_size`` is split into equal, contiguous per-rank shares; each rank's
loss is the mean over its share and DDP averages the gradients, so one update equals the
one-process update on the same global batch (exactly in exact arithmetic; with dropout > 0 the
ranks draw different dropout masks).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..config import NoiseARConfig
from ..io import load, save, write_atomically
from ..model import NoiseAR, eval_mode, standard_normal
from .data import (
    Batch,
    BatchPlan,
    DatasetError,
    ShardDataset,
    known_start_noise,
    repeated_noises_message,
    shift_from_start,
    validation_prompt,
)

CHECKPOINT_FORMAT = "noisear-train-checkpoint-1"
# A resumed run must not change these (they decide the data order and the updates).
RESUME_FIXED = ("batch_size", "seed", "validation_fraction", "validation_seed_fraction")

# (text [B,T,D], noise [B,C,H,W], text_mask [B,T] or None[, mean_target [B,C,H,W]]) -> log p(noise | text)
# in nats, [B]; mean_target: see NoiseAR.log_prob (a control variate for the means' gradient)
LogProb = Callable[..., torch.Tensor]


@dataclass
class TrainConfig:
    """Options of the shared loop. Steps count optimiser updates of one global batch."""

    out_dir: str = "runs/noisear"
    steps: int = 1000
    batch_size: int = 64  # global batch (all processes together)
    lr: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    ema_decay: float = 0.0  # 0 = off; e.g. 0.999
    seed: int = 0
    validation_fraction: float = 0.1  # share of prompts held out (likelihood training)
    validation_seed_fraction: float = 0.0  # share of seeds (starting noises) held out as well
    bf16: bool = True  # bf16 autocast, used on CUDA only
    log_every: int = 10
    val_every: int = 0  # 0 = validate at the end only
    checkpoint_every: int = 100
    resume: bool = True  # continue from out_dir/checkpoint.pt when it exists
    device: str | None = None  # None: cuda:LOCAL_RANK when available, else cpu
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("validation_fraction", "validation_seed_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Runtime:
    """Where this process runs: rank, world size, device, and the unwrapped model."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    model: NoiseAR | None = None
    owns_group: bool = False

    @classmethod
    def start(cls, device: str | None) -> "Runtime":
        """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        owns = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            owns = True
        rank = dist.get_rank() if dist.is_initialized() else 0
        return cls(rank=rank, world=world, device=device, owns_group=owns)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (every rank must call it)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return dict(zip(keys, (tensor / self.world).tolist()))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


class Objective(Protocol):
    """What the shared loop needs from a training method (likelihood training, DPO)."""

    uses_dropout: bool  # train mode (dropout on) while computing the loss

    def batch(self, step: int, runtime: Runtime) -> Any:
        """This rank's share of global batch ``step``; a deterministic function of step and state."""

    def loss(self, log_prob: LogProb, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss (mean over this rank's share) and metrics to log. Call log_prob once."""

    def validate(self, model: NoiseAR) -> dict[str, float]:
        """Metrics on held-out data, called on rank 0 with the weights that will be saved."""

    def state_dict(self) -> dict:
        """Plain tensors/numbers needed to resume exactly (e.g. the current DPO round)."""

    def load_state_dict(self, state: dict) -> None: ...


class _LogProbModule(nn.Module):
    """Makes log_prob the forward pass, so DDP synchronises its gradients."""

    def __init__(self, model: NoiseAR) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        text: torch.Tensor,
        noise: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        mean_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model.log_prob(text, noise, text_mask, mean_target)


class EMA:
    """Exponential moving average of the parameters: ema = decay * ema + (1 - decay) * param."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    def copy_to(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the averaged weights."""
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(self.shadow, strict=False)
        return averaged


# RNG state as plain tensors, so that torch.load(weights_only=True) can read it back ---------------
def _rng_state(device: torch.device) -> dict[str, Any]:
    _, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class _Log:
    """jsonl log on rank 0. A resumed run continues the file from ``keep_bytes`` (its size when the
    checkpoint was saved), dropping records written after that checkpoint."""

    def __init__(self, path: Path | None, keep_bytes: int | None = None) -> None:
        if path is not None and keep_bytes is not None and path.exists() and path.stat().st_size > keep_bytes:
            os.truncate(path, keep_bytes)
        self.handle = open(path, "a", encoding="utf-8") if path is not None else None

    def size(self) -> int | None:
        return None if self.handle is None else self.handle.tell()

    def write(self, record: dict) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class _StopOnInterrupt:
    """Within ``with``: a first SIGINT (Ctrl-C) only sets ``requested``, for the loop to stop at a step
    boundary; a second one raises KeyboardInterrupt at once. Only the main thread can take signals."""

    def __init__(self) -> None:
        self.requested, self._previous = False, None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("interrupt: stopping after this step and saving a checkpoint (Ctrl-C again: stop now, unsaved)")

    def __enter__(self) -> "_StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def agreed(self, runtime: "Runtime") -> bool:
        """Whether any rank was interrupted (every rank must call it at the same step)."""
        if runtime.world == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=runtime.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _save_checkpoint(
    path: Path,
    step: int,
    model: NoiseAR,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    objective: Objective,
    config: TrainConfig,
    runtime: Runtime,
    log: _Log,
    pending: list[dict[str, float]],
) -> None:
    rng = _rng_state(runtime.device)
    if runtime.world > 1:
        gathered: list[Any] = [None] * runtime.world
        dist.all_gather_object(gathered, rng)
        rng_per_rank = gathered
    else:
        rng_per_rank = [rng]
    if runtime.rank == 0:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "data_position": step,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model_config": model.config.to_json(),
            "optimizer": optimizer.state_dict(),
            "ema": None if ema is None else {k: v.cpu() for k, v in ema.shadow.items()},
            "rng": rng_per_rank,
            "objective": objective.state_dict(),
            "config": json.dumps(asdict(config)),
            "log_bytes": log.size(),
            "pending_metrics": pending,
        }
        write_atomically(path, lambda temporary: torch.save(state, temporary))  # a kill keeps the previous one
    runtime.barrier()


def _load_checkpoint(
    path: Path,
    model: NoiseAR,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    objective: Objective,
    config: TrainConfig,
    runtime: Runtime,
) -> dict[str, Any]:
    """Restore the state saved at a step boundary; returns step, log_bytes and pending_metrics."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged or foreign files
        reason = " ".join(str(err).split())[:200]
        raise ValueError(
            f"{path} cannot be read as a training checkpoint ({type(err).__name__}: {reason}); "
            f"remove it to start over, or use another out_dir"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a NoiseAR training checkpoint ({CHECKPOINT_FORMAT})")
    saved = json.loads(state["config"])
    saved = {"validation_seed_fraction": 0.0, **saved}  # checkpoints from before the seed split
    changed = [f"{key}: {saved[key]} -> {getattr(config, key)}" for key in RESUME_FIXED if saved[key] != getattr(config, key)]
    if changed:
        raise ValueError(
            f"cannot resume {path}: {', '.join(changed)}. Use the original values, or a new "
            f"out_dir (or resume=False) to start over"
        )
    if NoiseARConfig.from_json(state["model_config"]) != model.config:
        raise ValueError(f"cannot resume {path}: it holds a different network config; use a new out_dir")
    if (ema is None) != (state["ema"] is None):
        raise ValueError(f"cannot resume {path}: EMA was {'off' if state['ema'] is None else 'on'} in that run")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.shadow = {k: v.to(runtime.device) for k, v in state["ema"].items()}
    objective.load_state_dict(state["objective"])
    if len(state["rng"]) == runtime.world:
        _set_rng_state(state["rng"][runtime.rank], runtime.device)
    else:  # another process count: the data order is unchanged, dropout masks are not
        _seed_everything(config.seed + 7919 * runtime.rank + state["step"])
    return {
        "step": int(state["step"]),
        "log_bytes": state.get("log_bytes"),
        "pending_metrics": list(state.get("pending_metrics", [])),
    }


def train(model: NoiseAR, objective: Objective, config: TrainConfig) -> NoiseAR:
    """Run the loop to ``config.steps`` (resuming when a checkpoint exists) and return the final prior.

    The returned model holds the EMA weights when EMA is on; it is also written to
    ``out_dir/prior.safetensors`` by rank 0.
    """
    runtime = Runtime.start(config.device)
    out_dir = Path(config.out_dir)
    if runtime.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    runtime.barrier()
    model = model.float().to(runtime.device)
    runtime.model = model
    _seed_everything(config.seed + 7919 * runtime.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps, weight_decay=config.weight_decay
    )
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    checkpoint = out_dir / "checkpoint.pt"
    resumed = {"step": 0, "log_bytes": 0, "pending_metrics": []}  # a fresh start also starts a fresh log
    if config.resume and checkpoint.exists():
        resumed = _load_checkpoint(checkpoint, model, optimizer, ema, objective, config, runtime)
    step, pending = resumed["step"], resumed["pending_metrics"]
    log_prob: nn.Module = _LogProbModule(model)
    if runtime.world > 1:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        log_prob = nn.parallel.DistributedDataParallel(log_prob, device_ids=device_ids, broadcast_buffers=False)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if config.bf16 and runtime.device.type == "cuda"
        else contextlib.nullcontext()
    )
    log = _Log(out_dir / "log.jsonl" if runtime.rank == 0 else None, resumed["log_bytes"])
    bar = tqdm(
        total=config.steps, initial=step, disable=runtime.rank != 0 or not config.progress, desc="train", dynamic_ncols=True
    )
    started = time.time()
    try:
        with _StopOnInterrupt() as interrupt:
            while step < config.steps:
                model.train(objective.uses_dropout)
                batch = objective.batch(step, runtime)
                lr = learning_rate(step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    loss, metrics = objective.loss(log_prob, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
                optimizer.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                pending.append({**metrics, "grad_norm": float(grad_norm)})
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    averaged = runtime.mean({k: float(np.mean([m[k] for m in pending])) for k in pending[0]})
                    pending = []
                    bar.set_postfix({k: f"{v:.4g}" for k, v in averaged.items() if k != "grad_norm"})
                    log.write({"kind": "train", "step": step, "lr": lr, **averaged, "elapsed_s": round(time.time() - started, 3)})
                if config.val_every and step % config.val_every == 0 and step < config.steps:
                    _validate(model, ema, objective, runtime, log, step)
                periodic = config.checkpoint_every and step % config.checkpoint_every == 0
                stop = step < config.steps and interrupt.agreed(runtime)
                if (periodic or stop) and step < config.steps:
                    _save_checkpoint(checkpoint, step, model, optimizer, ema, objective, config, runtime, log, pending)
                if stop:
                    raise KeyboardInterrupt  # after a whole step, saved: resuming is exact
            _save_checkpoint(checkpoint, step, model, optimizer, ema, objective, config, runtime, log, pending)
    finally:
        bar.close()
    final = ema.copy_to(model) if ema is not None else model
    final.train(False)
    _validate(model, ema, objective, runtime, log, step, final=final)
    if runtime.rank == 0:
        save(final, out_dir / "prior.safetensors")
    log.close()
    runtime.barrier()
    if runtime.owns_group:
        dist.destroy_process_group()
    return final


def _validate(
    model: NoiseAR, ema: EMA | None, objective: Objective, runtime: Runtime, log: _Log, step: int, final: NoiseAR | None = None
) -> None:
    if runtime.rank == 0:
        weights = final if final is not None else (ema.copy_to(model) if ema is not None else model)
        with eval_mode(weights), torch.no_grad():
            metrics = objective.validate(weights)
        if metrics:
            log.write({"kind": "validation", "step": step, **metrics})
            tqdm.write(f"validation at step {step}: " + ", ".join(f"{k} {v:.5g}" for k, v in metrics.items()))
    runtime.barrier()


# Likelihood training ---------------------------------------------------------------------------
def nll_per_dim(log_prob: torch.Tensor, dims: int) -> torch.Tensor:
    """Negative log-likelihood in nats per dimension, [B] -> [B]."""
    return -log_prob / dims


def masked_mean_pool(text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """[B,T,D], [B,T] -> [B,D]: mean over real tokens."""
    weights = text_mask.to(text.dtype)[..., None]
    return (text * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class PromptMeanBaseline:
    """Gaussian whose mean depends on the prompt only: N(W^T [pool(text), 1], diag(var)).

    W is a ridge regression from the masked mean-pooled prompt embedding to the prompt-mean shift,
    fitted on the training split (streamed: accumulates X^T X and X^T Y, memory (D+1) x C*H*W
    float64). The target is noise - starting noise when the dataset's seeds say what the starting
    noise was (it has mean 0, so this estimates the noise's mean with far less variance), else the
    noise itself. ``var`` is the per-dimension residual variance of the noise on the training split
    (a second pass; fitted, not unit). ``ridge`` is relative: lambda = ridge * mean diagonal of X^T X.
    It generalises to unseen (validation) prompts, which a table of per-prompt means could not.
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
        dims = math.prod(dataset.item_shapes["noise"])
        self.uses_start_noise = known_start_noise(dataset.info)
        gram = torch.zeros(width, width, dtype=torch.float64)
        cross = torch.zeros(width, dims, dtype=torch.float64)
        count = 0
        for batch in dataset.iterate("train", validation_fraction, batch_size, seed_fraction):
            x = self.features(batch.text, batch.text_mask)
            target = shift_from_start(batch.noise, batch.seed) if self.uses_start_noise else batch.noise
            gram += x.T @ x
            cross += x.T @ target.flatten(1).double()
            count += len(batch)
        if count == 0:
            raise DatasetError("the training split is empty; cannot fit the prompt-mean baseline")
        penalty = ridge * gram.diagonal()[:-1].mean() * torch.eye(width, dtype=torch.float64)
        penalty[-1, -1] = 0.0  # the intercept is not shrunk
        self.weight = torch.linalg.solve(gram + penalty, cross)
        squares = torch.zeros(dims, dtype=torch.float64)
        for batch in dataset.iterate("train", validation_fraction, batch_size, seed_fraction):
            squares += (batch.noise.flatten(1).double() - self.mean(batch.text, batch.text_mask)).pow(2).sum(0)
        self.var = (squares / count).clamp_min(1e-6)

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
    dims_of = {shape: math.prod(shape) for shape in dataset.noise_shapes}
    sums: dict[str, float] = {}
    counts = {"val_pairs": 0, "val_pairs_unseen_prompts": 0}
    data_sum = data_squares = data_values = 0.0
    prompts: dict[tuple, dict] = {}  # (prompt, shape) -> first text, mask and the summed shift
    known_start = known_start_noise(dataset.info)

    def add(name: str, values: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(values.double().sum())

    for batch in dataset.iterate("validation", validation_fraction, batch_size, seed_fraction):
        shape = tuple(batch.noise.shape[1:])
        nll = nll_per_dim(
            model.log_prob(batch.text.to(device), batch.noise.to(device), batch.text_mask.to(device)), dims_of[shape]
        ).cpu()
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
        shift = shift_from_start(batch.noise, batch.seed) if known_start else batch.noise
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


class LikelihoodObjective:
    """Teacher-forced Gaussian NLL in nats/dim on the training split of a shard dataset.

    Its loss is logged as ``train_loss`` (a training figure, never a result). With ``control_variate``
    the means learn from noise - starting noise (``mean_target`` of NoiseAR.log_prob): golden noise is its
    starting noise plus a small prompt-dependent shift, and the starting noise's patch is independent of the
    prompt and of the earlier patches, so the expected gradient is the same while the per-sample noise no
    longer swamps the shift; the loss value is still the NLL. It needs the dataset's seeds to say what the
    starting noise was (``known_start_noise``). Validation: :func:`held_out_metrics` on the held-out pairs,
    with the prompt-mean baseline fitted on the training split (single-size data only).
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
            mean_target = shift_from_start(batch.noise, batch.seed.tolist())
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


def initial_model(model_config: NoiseARConfig | None = None, init: str | os.PathLike | None = None, seed: int = 0) -> NoiseAR:
    """A prior to start from: ``init`` (a published .pth or our .safetensors via noisear.load) or a fresh
    ``NoiseAR(model_config)`` with the published initialisation (untrained prior ~ N(0, I)), seeded."""
    if (model_config is None) == (init is None):
        raise ValueError("give exactly one of model_config (train from scratch) or init (a checkpoint to start from)")
    if init is not None:
        model = load(init)
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})  # own, writable storage
        return model
    torch.manual_seed(seed)
    return NoiseAR(model_config)


def check_compatible(model: NoiseAR, dataset: ShardDataset) -> None:
    """The dataset's noise [C,H,W] and text width must be what the prior models."""
    c = model.config
    text = dataset.item_shapes["text"]
    for noise in dataset.noise_shapes:
        fits = (
            noise[0] == c.channels and noise[1] % c.patch_size == 0 and noise[2] % c.patch_size == 0
            if c.positions == "2d"
            else tuple(noise) == (c.channels, c.latent_height, c.latent_width)
        )
        if not fits or text[1] != c.text_dim:
            models = (
                f"[{c.channels}, H, W] (H, W multiples of {c.patch_size})"
                if c.positions == "2d"
                else str([c.channels, c.latent_height, c.latent_width])
            )
            raise DatasetError(
                f"dataset holds noise {list(noise)} and text width {text[1]}, but the prior models "
                f"noise {models} with text width {c.text_dim}; several sizes (aspect-ratio "
                f"buckets) need a prior with positions='2d'"
            )


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
    data_dir: str | os.PathLike,
    config: TrainConfig,
    model_config: NoiseARConfig | None = None,
    init: str | os.PathLike | None = None,
    baseline_ridge: float = 0.1,
    allow_repeated_noises: bool = False,
    control_variate: bool | None = None,
) -> NoiseAR:
    """Likelihood training on a shard directory, from scratch (model_config) or from a checkpoint (init).
    A dataset whose starting noises repeat across prompts is refused unless ``allow_repeated_noises``.
    ``control_variate`` (see LikelihoodObjective): None = when the dataset's seeds say what the starting
    noises were."""
    dataset = ShardDataset(data_dir)
    if not allow_repeated_noises:
        refuse_repeated_noises(dataset)
    if control_variate is None:
        control_variate = known_start_noise(dataset.info)
    model = initial_model(model_config, init, config.seed)
    check_compatible(model, dataset)
    return train(model, LikelihoodObjective(dataset, config, baseline_ridge, control_variate=control_variate), config)
