"""DPO fine-tuning of a NoiseAR prior on the shared training loop (noisear.train.loop).

A round: pick ``prompts_per_round`` prompts, draw ``rollouts`` noises per prompt from the current
prior (``model.sample`` at ``temperature``), score them with a pluggable scorer, form pairs
(best vs worst, or all pairs whose reward differs by more than ``margin``), and record the frozen
reference's log-probabilities. The next ``steps_per_round`` steps minimise

    -log sigmoid(beta * ((log pi(z+) - log pi_ref(z+)) - (log pi(z-) - log pi_ref(z-))))

over global batches of pairs; log pi is the full log density in nats (sum over patches).
Under DDP each rank rolls out its share of the round's prompts and the rollouts are gathered, so
the pairs (and the updates) do not depend on the number of processes. The round's pairs are part
of the checkpoint, so a killed run resumes exactly.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..model import TEMPERATURE_MAX, NoiseAR, standard_normal
from .data import PromptSet
from .loop import LogProb, Runtime, TrainConfig, check_ranges, option, train
from .runs import TrainingError, callable_name, tensors_digest, weights_digest

PAIRINGS = ("best_worst", "margin")


# (noise [B,C,H,W] (video priors: [B,C,T,H,W]), the B prompts) -> reward [B]; higher is better. For real models:
# noise -> image -> score.
Scorer = Callable[[torch.Tensor, PromptSet], torch.Tensor]


@dataclass(frozen=True)
class DPOConfig:
    """Rollouts, pairing and the DPO temperature ``beta`` (on log-densities in nats); each field's ``help``
    metadata is its ``noisear dpo`` option's help, its ``range`` the values it accepts."""

    beta: float = option(0.1, "DPO beta on log-densities in nats", 0.0, open_low=True)
    rollouts: int = option(8, "noises drawn per prompt each round (k)", 2)
    prompts_per_round: int = option(16, "prompts rolled out each round; must divide by the process count", 1)
    steps_per_round: int = option(4, "optimiser steps on each round's pairs before new rollouts", 1)
    temperature: float = option(1.0, "sampling temperature of the rollouts", 0.0, TEMPERATURE_MAX, open_low=True)
    pairing: str = option(
        "best_worst", "'best_worst' (one pair per prompt) or 'margin' (every pair whose rewards differ by more than margin)"
    )
    margin: float = option(0.0, "minimum reward difference for a pair", 0.0)

    def __post_init__(self) -> None:
        check_ranges(self, TrainingError)
        if self.pairing not in PAIRINGS:
            raise TrainingError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss [B] from log-probabilities [B] (nats)."""
    return -F.logsigmoid(beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)))


def make_pairs(rewards: torch.Tensor, pairing: str = "best_worst", margin: float = 0.0) -> torch.Tensor:
    """rewards [P,k] -> [n,3] rows (prompt, chosen, rejected) with reward(chosen) - reward(rejected) > margin."""
    if pairing == "best_worst":
        best, worst = rewards.argmax(1), rewards.argmin(1)
        rows = torch.arange(len(rewards))
        pairs = torch.stack([rows, best, worst], dim=1)
        return pairs[(rewards[rows, best] - rewards[rows, worst]) > margin]
    if pairing == "margin":
        better = (rewards[:, :, None] - rewards[:, None, :]) > margin  # [P, chosen, rejected]
        return better.nonzero()
    raise TrainingError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


def rollout_seed(seed: int, round_index: int, prompt_index: int, draw: int) -> int:
    """Seed of one rollout noise; independent of the process count."""
    digest = hashlib.sha256(f"dpo:{seed}:{round_index}:{prompt_index}:{draw}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


class DPOObjective:
    """The DPO :class:`~noisear.train.loop.Objective`. Dropout is off while computing log pi."""

    uses_dropout = False

    def __init__(
        self,
        reference: NoiseAR,
        prompts: PromptSet,
        scorer: Scorer,
        config: DPOConfig,
        train_config: TrainConfig,
        validation_prompts: PromptSet | None = None,
    ) -> None:
        self.reference = copy.deepcopy(reference).float().train(False).requires_grad_(False)
        self.prompts, self.scorer, self.config = prompts, scorer, config
        self.batch_size, self.seed = train_config.batch_size, train_config.seed
        self.validation_prompts = validation_prompts
        if config.prompts_per_round > len(prompts):
            raise TrainingError(f"prompts_per_round {config.prompts_per_round} exceeds the {len(prompts)} prompts given")
        self.round = -1
        self.pairs: dict[str, torch.Tensor] = {}
        self.round_metrics: dict[str, float] = {}

    # Rollouts ------------------------------------------------------------------------------------
    def _sample(self, model: NoiseAR, prompts: PromptSet, round_index: int, device: torch.device) -> torch.Tensor:
        """[P, k, C, H, W] rollouts of the prompts (video priors: [P, k, C, T, H, W]) at the size the prior was trained
        at, with seeds from rollout_seed."""
        c, k = model.config, self.config.rollouts
        seeds = [rollout_seed(self.seed, round_index, int(p), j) for p in prompts.index for j in range(k)]
        eps = standard_normal((len(seeds), c.channels, *c.latent_size), seeds)
        text = prompts.text.repeat_interleave(k, 0).to(device)
        mask = prompts.text_mask.repeat_interleave(k, 0).to(device)
        noise = model.sample(text, eps.to(device), temperature=self.config.temperature, text_mask=mask)
        return noise.clone().unflatten(0, (len(prompts), k))  # clone: leave inference mode

    def _score(self, noise: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
        """[P,k,...] -> rewards [P,k] float64; the scorer must give one finite reward per noise."""
        k, count = noise.shape[1], noise.shape[0] * noise.shape[1]
        rewards = self.scorer(noise.flatten(0, 1), prompts.select(torch.arange(len(prompts)).repeat_interleave(k)))
        rewards = torch.as_tensor(rewards).detach()
        problem = (
            f"shape {list(rewards.shape)}"
            if tuple(rewards.shape) != (count,)
            else "NaN or infinite rewards"
            if not bool(torch.isfinite(rewards).all())
            else None
        )
        if problem:
            raise TrainingError(
                f"the scorer {callable_name(self.scorer)} returned {problem} for {count} noises; a DPO scorer returns "
                f"one finite reward per noise, [{count}]"
            )
        return rewards.double().reshape(len(prompts), k)

    def _rollout(self, round_index: int, runtime: Runtime) -> None:
        config, world = self.config, runtime.world
        if config.prompts_per_round % world:
            raise TrainingError(f"prompts_per_round {config.prompts_per_round} is not divisible by {world} processes")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + round_index)
        rows = torch.randperm(len(self.prompts), generator=generator)[: config.prompts_per_round]
        share = config.prompts_per_round // world
        mine = self.prompts.select(rows[runtime.rank * share : (runtime.rank + 1) * share])
        noise = self._sample(runtime.model, mine, round_index, runtime.device)
        rewards = self._score(noise, mine).to(runtime.device)
        if world > 1:
            noise = _gather(noise)
            rewards = _gather(rewards)
        pairs = make_pairs(rewards.cpu(), config.pairing, config.margin)
        if len(pairs) == 0:
            raise TrainingError(
                f"DPO round {round_index}: no pair of rollouts differs in reward by more than "
                f"{config.margin}; lower the margin or raise rollouts"
            )
        chosen = noise[pairs[:, 0], pairs[:, 1]]
        rejected = noise[pairs[:, 0], pairs[:, 2]]
        round_prompts = self.prompts.select(rows[pairs[:, 0]])
        self.reference.to(runtime.device)
        with torch.no_grad():
            text, mask = round_prompts.text.to(runtime.device), round_prompts.text_mask.to(runtime.device)
            reference_chosen = self.reference.log_prob(text, chosen, mask)
            reference_rejected = self.reference.log_prob(text, rejected, mask)
        order = torch.randperm(len(pairs), generator=generator)
        self.round = round_index
        self.pairs = {
            "text": round_prompts.text.cpu(),
            "text_mask": round_prompts.text_mask.cpu(),
            "chosen": chosen.cpu(),
            "rejected": rejected.cpu(),
            "order": order,
            "reference_chosen": reference_chosen.cpu(),
            "reference_rejected": reference_rejected.cpu(),
        }
        self.round_metrics = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()),
            "pairs": float(len(pairs)),
        }
        if runtime.rank == 0:
            tqdm.write(f"DPO round {round_index}: reward mean {self.round_metrics['reward_mean']:.5f}, {len(pairs)} pairs")

    # Objective -------------------------------------------------------------------------------------
    def batch(self, step: int, runtime: Runtime) -> dict[str, torch.Tensor]:
        round_index, within = divmod(step, self.config.steps_per_round)
        if round_index != self.round:
            self._rollout(round_index, runtime)
        if self.batch_size % runtime.world:
            raise TrainingError(f"global batch {self.batch_size} is not divisible by {runtime.world} processes")
        share = self.batch_size // runtime.world
        count = len(self.pairs["order"])
        positions = (
            torch.arange(within * self.batch_size + runtime.rank * share, within * self.batch_size + (runtime.rank + 1) * share)
            % count
        )
        picked = self.pairs["order"][positions]
        return {key: value[picked].to(runtime.device) for key, value in self.pairs.items() if key != "order"}

    def loss(self, log_prob: LogProb, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        text = torch.cat([batch["text"], batch["text"]])
        mask = torch.cat([batch["text_mask"], batch["text_mask"]])
        policy = log_prob(text, torch.cat([batch["chosen"], batch["rejected"]]), mask)
        policy_chosen, policy_rejected = policy.chunk(2)
        losses = dpo_loss(
            policy_chosen, policy_rejected, batch["reference_chosen"], batch["reference_rejected"], self.config.beta
        )
        margin = ((policy_chosen - batch["reference_chosen"]) - (policy_rejected - batch["reference_rejected"])).detach()
        loss = losses.mean()
        return loss, {
            "dpo_loss": loss.item(),
            "implicit_accuracy": float((margin > 0).double().mean()),
            **{f"round_{k}": v for k, v in self.round_metrics.items()},
        }

    def validate(self, model: NoiseAR) -> dict[str, float]:
        """Mean reward of fixed-seed rollouts on the validation prompts (empty without them)."""
        if self.validation_prompts is None:
            return {}
        device = next(model.parameters()).device
        noise = self._sample(model, self.validation_prompts, -1, device)
        return {"val_reward_mean": float(self._score(noise, self.validation_prompts).mean())}

    def state_dict(self) -> dict:
        return {
            "round": self.round,
            "pairs": self.pairs,
            "round_metrics": self.round_metrics,
            "reference": {k: v.cpu() for k, v in self.reference.state_dict().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.round, self.pairs = int(state["round"]), dict(state["pairs"])
        self.round_metrics = dict(state["round_metrics"])
        self.reference.load_state_dict(state["reference"])

    def identity(self) -> dict[str, Any]:
        def prompt_digest(prompts: PromptSet | None) -> str | None:
            if prompts is None:
                return None
            return tensors_digest({"text": prompts.text, "text_mask": prompts.text_mask, "index": prompts.index})

        return {
            "method": "dpo",
            "dpo": asdict(self.config),
            "scorer": callable_name(self.scorer),
            "prompts": prompt_digest(self.prompts),
            "validation_prompts": prompt_digest(self.validation_prompts),
            "reference": weights_digest(self.reference),
        }


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors of all ranks along dim 0, in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def train_dpo(
    model: NoiseAR,
    prompts: PromptSet,
    scorer: Scorer,
    config: TrainConfig,
    dpo: DPOConfig = DPOConfig(),
    validation_prompts: PromptSet | None = None,
    inputs: Sequence[str] = (),
) -> NoiseAR:
    """DPO from ``model`` (also the frozen reference) on the shared loop; returns the fine-tuned prior.
    ``inputs``: the files and folders it was read from (the prior, the prompts' dataset), which no output may
    replace (noisear.train.loop.train)."""
    objective = DPOObjective(model, prompts, scorer, dpo, config, validation_prompts)
    return train(model, objective, config, inputs)
