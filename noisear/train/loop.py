"""The one training loop: likelihood training (noisear.train.likelihood) and DPO (noisear.train.dpo) share it.

`train(model, objective, config)` runs AdamW with linear warm-up and cosine decay, gradient
clipping, optional EMA, bf16 autocast on CUDA, a tqdm bar, a jsonl log, periodic checkpoints
that resume exactly, and DDP under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPU).
What differs between training methods is an :class:`Objective`: which batch a step uses and which
loss it computes from log-probabilities. :func:`initial_model` gives the prior a run starts from.

Files in ``config.out_dir`` and the rules for resuming and overwriting: noisear.train.runs (``run.json``,
``checkpoint.safetensors``, ``log.jsonl``, ``prior.safetensors``; a run resumes only into a folder that holds
the same run, and no output replaces an input).

Interrupts: Ctrl-C (SIGINT) finishes the current step, saves a checkpoint at that step boundary and
raises KeyboardInterrupt, so resuming gives bitwise the weights of an uninterrupted run (a second
Ctrl-C stops at once, without saving; like a kill, that resumes from the last checkpoint). On
resume ``log.jsonl`` is cut back to what it held when the checkpoint was saved (a run that starts
from step 0 starts an empty log), so no record repeats.

A non-finite loss or gradient stops the run at once: nothing of that step is applied or saved (the last
checkpoint stays), the log gets a ``stopped`` record, and :class:`~noisear.train.runs.TrainingError` names the
likely cause. Every record of the log is strict JSON.

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
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..config import NoiseARConfig
from ..io import load, save
from ..model import NoiseAR, eval_mode
from .runs import (
    RUN_OUTPUTS,
    RunFolder,
    TrainingError,
    identity_digest,
    prepare_out_dir,
    read_checkpoint,
    run_identity,
    weights_digest,
    write_checkpoint,
)

# (text [B,T,D], noise [B,C,H,W], text_mask [B,T] or None[, mean_target [B,C,H,W]]) -> log p(noise | text)
# in nats, [B]; mean_target: see NoiseAR.log_prob (a control variate for the means' gradient)
LogProb = Callable[..., torch.Tensor]
SEED_LIMIT = 2**32  # seeds of a run are below this (numpy's legacy seeding takes 32 bits)
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d{1,3})?|mps")


@dataclass(frozen=True)
class Range:
    """The values a numeric option accepts: a finite number (an integer when ``integer``) from ``low`` to
    ``high``, each end included unless ``open_low`` / ``open_high``. Kept in a field's metadata as "range"."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    integer: bool = False

    def __str__(self) -> str:
        high = "" if self.high == math.inf else f"{self.high:g}"
        return f"{'(' if self.open_low else '['}{self.low:g}, {high or 'inf'}{')' if self.open_high or not high else ']'}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not accepted, or None."""
        kinds = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"must be {'an integer' if self.integer else 'a number'}, got {type(value).__name__} {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        below = value <= self.low if self.open_low else value < self.low
        above = value >= self.high if self.open_high else value > self.high
        if below or above:
            return f"must be {'an integer' if self.integer else 'a number'} in {self}, got {value}"
        return None


def check_ranges(options: Any, error: type[Exception]) -> None:
    """Raise ``error`` naming the first field of dataclass ``options`` outside its metadata "range"."""
    for item in fields(options):
        accepted = item.metadata.get("range")
        problem = accepted.problem(getattr(options, item.name)) if accepted is not None else None
        if problem:
            raise error(f"{item.name} (--{item.name.replace('_', '-')}) {problem}")


def option(default: Any, help: str, low: float | None = None, high: float = math.inf, **ends: bool) -> Any:
    """A dataclass field with its option's help and, for numbers, the Range of accepted values."""
    metadata: dict[str, Any] = {"help": help}
    if low is not None:
        metadata["range"] = Range(low, high, integer=isinstance(default, int) and not isinstance(default, bool), **ends)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Options of the shared loop (each field's ``help`` metadata is its ``noisear train``/``dpo`` option's help,
    its ``range`` the values it accepts). Steps count optimiser updates of one global batch. Every field but
    RESUMABLE (noisear.train.runs) is part of the run's identity: a resumed run must keep it."""

    out_dir: str = option("runs/noisear", "output directory: run.json, checkpoint.safetensors, log.jsonl and prior.safetensors")
    steps: int = option(
        1000, "optimiser steps (one global batch each) to run in all, counting steps already done when resuming", 1
    )
    batch_size: int = option(
        64, "global batch (samples for train, pairs for dpo) over all processes; must divide by the process count", 1
    )
    lr: float = option(1e-4, "peak learning rate of AdamW", 0.0, 1.0, open_low=True)
    min_lr_ratio: float = option(0.1, "the cosine schedule ends at lr * this", 0.0, 1.0)
    warmup_steps: int = option(100, "steps of linear warm-up from lr/warmup_steps to lr", 0)
    weight_decay: float = option(0.01, "AdamW weight decay", 0.0, 1.0)
    beta1: float = option(0.9, "AdamW beta1", 0.0, 1.0, open_high=True)
    beta2: float = option(0.999, "AdamW beta2", 0.0, 1.0, open_high=True)
    adam_eps: float = option(1e-8, "AdamW epsilon", 0.0, 1.0, open_low=True)
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)", 0.0)
    ema_decay: float = option(
        0.0,
        "keep an exponential moving average of the weights with this decay and save it as the prior (0: off)",
        0.0,
        1.0,
        open_high=True,
    )
    seed: int = option(0, "seed of the data order, initialisation and rollouts", 0, SEED_LIMIT, open_high=True)
    validation_fraction: float = option(
        0.1,
        "share of prompts (not samples) held out for validation, chosen by a hash of the prompt index",
        0.0,
        1.0,
        open_high=True,
    )
    validation_seed_fraction: float = option(
        0.0,
        "share of seeds (starting noises) held out as well, chosen by a hash of the seed; "
        "validation pairs never share a noise with training pairs",
        0.0,
        1.0,
        open_high=True,
    )
    bf16: bool = option(True, "bf16 autocast on CUDA (never used on the CPU)")
    log_every: int = option(10, "write averaged training metrics to log.jsonl every this many steps", 1)
    val_every: int = option(0, "validate every this many steps (0: at the end only)", 0)
    checkpoint_every: int = option(
        100, "write checkpoint.safetensors every this many steps (resume point after a kill; 0: only at the end)", 0
    )
    device: str | None = option(None, "cpu, cuda, cuda:N or mps (default: cuda:LOCAL_RANK when available, else cpu)")
    progress: bool = option(True, "show a tqdm progress bar")

    def __post_init__(self) -> None:
        check_ranges(self, TrainingError)
        for name in ("bf16", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TrainingError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.out_dir, (str, os.PathLike)) or not os.fspath(self.out_dir):
            raise TrainingError(f"out_dir must name a folder, got {self.out_dir!r}")
        if self.device is not None and not (isinstance(self.device, str) and DEVICE_PATTERN.fullmatch(self.device)):
            raise TrainingError(f"device must be cpu, cuda, cuda:N or mps, got {self.device!r}")


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
        if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise TrainingError(
                f"device {device} is not available here ({found} CUDA device{'s' if found != 1 else ''} found); "
                f"give --device cpu{', or cuda:N with N < ' + str(found) if found else ''}"
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise TrainingError("device mps is not available here; give --device cpu")
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

    def identity(self) -> dict[str, Any]:
        """Plain values that define what this objective trains on and how (e.g. a digest of its data); part of
        the run's identity (noisear.train.runs.run_identity), so a run resumes only on the same."""


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


# RNG state as tensors and plain values, for the checkpoint file (noisear.train.runs.write_checkpoint) ------
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
            self.handle.write(json.dumps(record, allow_nan=False) + "\n")  # strict JSON: a NaN is a bug here
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


def _check_finite_weights(modules: dict[str, nn.Module | dict[str, torch.Tensor] | None], step: int) -> None:
    """Never save non-finite weights (the loss check stops a run before, so this is a last guard)."""
    for name, module in modules.items():
        if module is None:
            continue
        tensors = module.values() if isinstance(module, dict) else module.state_dict().values()
        if not all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
            raise TrainingError(
                f"the {name} weights hold NaN or infinite values after step {step}, so nothing was saved (the last "
                f"checkpoint stays); the learning rate is likely too high for this data: lower --lr"
            )


def _save_checkpoint(
    folder: RunFolder,
    step: int,
    model: NoiseAR,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    objective: Objective,
    identity: dict[str, Any],
    runtime: Runtime,
    log: _Log,
    pending: list[dict[str, float]],
) -> None:
    _check_finite_weights({"model": model, "EMA": None if ema is None else ema.shadow}, step)
    rng = _rng_state(runtime.device)
    if runtime.world > 1:
        gathered: list[Any] = [None] * runtime.world
        dist.all_gather_object(gathered, rng)
        rng_per_rank = gathered
    else:
        rng_per_rank = [rng]
    if runtime.rank == 0:
        state = {
            "run": identity_digest(identity),
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": None if ema is None else ema.shadow,
            "rng": rng_per_rank,
            "objective": objective.state_dict(),
            "log_bytes": log.size(),
            "pending_metrics": pending,
        }
        write_checkpoint(folder.checkpoint, state)  # atomic: a kill keeps the previous one
    runtime.barrier()


def _load_checkpoint(
    folder: RunFolder,
    model: NoiseAR,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    objective: Objective,
    identity: dict[str, Any],
    config: TrainConfig,
    runtime: Runtime,
) -> dict[str, Any]:
    """Restore the state saved at a step boundary; returns step, log_bytes and pending_metrics."""
    state = read_checkpoint(folder.checkpoint)
    if state.get("run") != identity_digest(identity):
        raise TrainingError(
            f"{folder.checkpoint} belongs to another run than {folder.run_file} describes (copied in?); nothing was "
            f"changed. Give a new output folder"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.shadow = {k: v.to(runtime.device) for k, v in state["ema"].items()}
    objective.load_state_dict(state["objective"])
    if len(state["rng"]) == runtime.world:
        _set_rng_state(state["rng"][runtime.rank], runtime.device)
    else:  # another process count: the data order is unchanged, dropout masks are not
        _seed_everything(config.seed + 7919 * runtime.rank + state["step"])
    return {"step": int(state["step"]), "log_bytes": state["log_bytes"], "pending_metrics": list(state["pending_metrics"])}


def _divergence(step: int, loss: float, grad_norm: float, lr: float, config: TrainConfig, runtime: Runtime) -> str:
    """Why step ``step`` (0-based: the number of updates before it) gave a non-finite loss or gradient, and the
    likely cause."""
    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm} (loss {loss:.4g})"
    low_precision = config.bf16 and runtime.device.type == "cuda"
    if step == 0 and not math.isfinite(loss):
        cause = (
            "the data or the starting weights: the very first forward pass is not finite (check the dataset with "
            "`noisear data inspect` and the --init file with `noisear inspect`)"
            + ("; or a bf16 overflow (try --no-bf16)" if low_precision else "")
        )
    elif low_precision and not math.isfinite(grad_norm) and math.isfinite(loss):
        cause = "a bf16 overflow in the backward pass (try --no-bf16), or a learning rate too high (lower --lr)"
    else:
        cause = (
            f"a learning rate too high for this data (lr {lr:.3g} at this step after {step} updates: lower --lr, "
            f"raise --warmup-steps or clip gradients with --grad-clip)"
            + ("; or a bf16 overflow (try --no-bf16)" if low_precision else "")
            + "; or bad data"
        )
    return (
        f"training stopped at step {step + 1}: {what}. Likely cause: {cause}. Nothing of this step was applied or "
        f"saved: the last checkpoint and the log are kept and no prior was written; start again in a new output "
        f"folder with changed settings"
    )


def train(model: NoiseAR, objective: Objective, config: TrainConfig, inputs: Sequence[str | os.PathLike] = ()) -> NoiseAR:
    """Run the loop to ``config.steps`` and return the final prior (the EMA weights when EMA is on), also
    written to ``out_dir/prior.safetensors`` by rank 0.

    ``model`` is where the run starts: its weights, the settings, the network and ``objective.identity()``
    make the run's identity (noisear.train.runs). An ``out_dir`` that holds the same run resumes it from its
    checkpoint (a finished run is returned as it is, nothing rewritten); one that holds another run is refused
    before anything is written. ``inputs``: the files and folders the run reads (data, init), none of which
    an output may replace.
    """
    runtime = Runtime.start(config.device)
    folder = RunFolder(Path(config.out_dir))
    identity = run_identity(asdict(config), json.loads(model.config.to_json()), weights_digest(model), objective.identity())
    prepare_out_dir(folder.path, RUN_OUTPUTS, inputs, create=runtime.rank == 0)
    folder.claim(identity, write=runtime.rank == 0)
    runtime.barrier()
    model = model.float().to(runtime.device)
    runtime.model = model
    _seed_everything(config.seed + 7919 * runtime.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps, weight_decay=config.weight_decay
    )
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    resumed = {"step": 0, "log_bytes": 0, "pending_metrics": []}  # a fresh start also starts a fresh log
    if folder.checkpoint.exists():
        resumed = _load_checkpoint(folder, model, optimizer, ema, objective, identity, config, runtime)
    step, pending = resumed["step"], resumed["pending_metrics"]
    if step == config.steps and folder.prior.is_file():  # finished: nothing to redo, nothing rewritten
        runtime.barrier()
        if runtime.owns_group:
            dist.destroy_process_group()
        return (ema.copy_to(model) if ema is not None else model).train(False)
    log_prob: nn.Module = _LogProbModule(model)
    if runtime.world > 1:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        log_prob = nn.parallel.DistributedDataParallel(log_prob, device_ids=device_ids, broadcast_buffers=False)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if config.bf16 and runtime.device.type == "cuda"
        else contextlib.nullcontext()
    )
    log = _Log(folder.log if runtime.rank == 0 else None, resumed["log_bytes"])
    bar = tqdm(
        total=config.steps, initial=step, disable=runtime.rank != 0 or not config.progress, desc="train", dynamic_ncols=True
    )
    started, first = time.time(), step
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
                loss_value, norm_value = float(loss.detach()), float(grad_norm)
                if not _agree_finite(math.isfinite(loss_value) and math.isfinite(norm_value), runtime):
                    reason = _divergence(step, loss_value, norm_value, lr, config, runtime)
                    log.write({"kind": "stopped", "step": step + 1, "reason": reason})
                    raise TrainingError(reason)
                optimizer.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                pending.append({**metrics, "grad_norm": norm_value})
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
                    _save_checkpoint(folder, step, model, optimizer, ema, objective, identity, runtime, log, pending)
                if stop:  # after a whole step, saved: resuming is exact
                    raise KeyboardInterrupt(f"stopped after step {step}, saved: run the same command to resume")
            if step > first:
                _save_checkpoint(folder, step, model, optimizer, ema, objective, identity, runtime, log, pending)
    except BaseException:
        log.close()
        raise
    finally:
        bar.close()
    final = ema.copy_to(model) if ema is not None else model
    final.train(False)
    _validate(model, ema, objective, runtime, log, step, final=final)
    if runtime.rank == 0:
        save(final, folder.prior)
    log.close()
    runtime.barrier()
    if runtime.owns_group:
        dist.destroy_process_group()
    return final


def _agree_finite(finite: bool, runtime: Runtime) -> bool:
    """Whether the step is finite on every rank (every rank must call it at the same step)."""
    if runtime.world == 1:
        return finite
    flag = torch.tensor([float(finite)], device=runtime.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


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


def initial_model(model_config: NoiseARConfig | None = None, init: str | os.PathLike | None = None, seed: int = 0) -> NoiseAR:
    """A prior to start from: ``init`` (a published .pth or our .safetensors via noisear.load) or a fresh
    ``NoiseAR(model_config)`` with the published initialisation (untrained prior ~ N(0, I)), seeded."""
    if (model_config is None) == (init is None):
        raise TrainingError("give exactly one of model_config (train from scratch) or init (a checkpoint to start from)")
    if init is not None:
        model = load(init)
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})  # own, writable storage
        return model
    torch.manual_seed(seed)
    return NoiseAR(model_config)
