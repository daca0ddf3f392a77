"""The one training loop: likelihood training (noisear.train.likelihood) and DPO (noisear.train.dpo) share it.

`train(model, objective, config)` runs AdamW with linear warm-up and cosine decay, gradient
clipping, optional EMA, bf16 autocast on CUDA, a tqdm bar, a jsonl log, periodic checkpoints
that resume exactly, and DDP under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPU).
What differs between training methods is an :class:`Objective`: which batch a step uses and which
loss it computes from log-probabilities. :func:`initial_model` gives the prior a run starts from.

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
from ..model import NoiseAR, eval_mode

CHECKPOINT_FORMAT = "noisear-train-checkpoint-1"
# A resumed run must not change these (they decide the data order and the updates).
RESUME_FIXED = ("batch_size", "seed", "validation_fraction", "validation_seed_fraction")

# (text [B,T,D], noise [B,C,H,W], text_mask [B,T] or None[, mean_target [B,C,H,W]]) -> log p(noise | text)
# in nats, [B]; mean_target: see NoiseAR.log_prob (a control variate for the means' gradient)
LogProb = Callable[..., torch.Tensor]


@dataclass
class TrainConfig:
    """Options of the shared loop (each field's ``help`` metadata is its ``noisear train``/``dpo`` option's help).
    Steps count optimiser updates of one global batch."""

    out_dir: str = field(
        default="runs/noisear", metadata={"help": "output directory: checkpoint.pt, log.jsonl and prior.safetensors"}
    )
    steps: int = field(
        default=1000,
        metadata={"help": "optimiser steps (one global batch each) to run in all, counting steps already done when resuming"},
    )
    batch_size: int = field(
        default=64,
        metadata={"help": "global batch (samples for train, pairs for dpo) over all processes; must divide by the process count"},
    )
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate of AdamW"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "the cosine schedule ends at lr * this"})
    warmup_steps: int = field(default=100, metadata={"help": "steps of linear warm-up from lr/warmup_steps to lr"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0: no clipping)"})
    ema_decay: float = field(
        default=0.0,
        metadata={"help": "keep an exponential moving average of the weights with this decay and save it as the prior (0: off)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the data order, initialisation and rollouts"})
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "share of prompts (not samples) held out for validation, chosen by a hash of the prompt index"},
    )
    validation_seed_fraction: float = field(
        default=0.0,
        metadata={
            "help": "share of seeds (starting noises) held out as well, chosen by a hash of the seed; "
            "validation pairs never share a noise with training pairs"
        },
    )
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (never used on the CPU)"})
    log_every: int = field(default=10, metadata={"help": "write averaged training metrics to log.jsonl every this many steps"})
    val_every: int = field(default=0, metadata={"help": "validate every this many steps (0: at the end only)"})
    checkpoint_every: int = field(
        default=100, metadata={"help": "write checkpoint.pt every this many steps (resume point after a kill)"}
    )
    resume: bool = field(default=True, metadata={"help": "continue from checkpoint.pt in the output directory when it exists"})
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when available, else cpu)"}
    )
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

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
