"""DPO: the loss on fixed numbers, pairing, reward going up on a toy, exact resume."""

import json
import math

import pytest
import torch
from test_train_likelihood import one_thread  # noqa: F401  (fixture)

from noisear import NoiseARConfig
from noisear.train.data import PromptSet
from noisear.train.dpo import DPOConfig, DPOObjective, dpo_loss, make_pairs, train_dpo
from noisear.train.loop import TrainConfig, initial_model, train
from noisear.train.runs import TrainingError

MODEL = NoiseARConfig(patch_size=2, channels=2, latent_height=4, latent_width=4, d_model=16, d_ff=32, text_dim=4, dropout=0.1)


def first_channel_mean(noise, prompts):
    """Toy reward: the mean of the noise's first channel."""
    return noise[:, 0].mean(dim=(1, 2))


def prompts(count=8):
    generator = torch.Generator().manual_seed(5)
    return PromptSet(torch.randn(count, 3, 4, generator=generator), torch.ones(count, 3, dtype=torch.bool), torch.arange(count))


def test_loss_equals_a_hand_computation():
    policy_chosen, policy_rejected = torch.tensor([-10.0, 3.0]), torch.tensor([-11.0, 2.0])
    reference_chosen, reference_rejected = torch.tensor([-12.0, 3.5]), torch.tensor([-10.0, 1.0])
    # pair 0: 0.5 * ((-10 + 12) - (-11 + 10)) = 1.5; pair 1: 0.5 * ((3 - 3.5) - (2 - 1)) = -0.75
    expected = torch.tensor([math.log1p(math.exp(-1.5)), math.log1p(math.exp(0.75))])
    loss = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5)
    torch.testing.assert_close(loss, expected)


def test_pairs_best_against_worst_or_all_above_a_margin():
    rewards = torch.tensor([[0.1, 0.5, 0.3], [1.0, 1.0, 1.0]])
    assert make_pairs(rewards).tolist() == [[0, 1, 0]]  # prompt 1 has no reward difference
    assert make_pairs(rewards, "margin", 0.25).tolist() == [[0, 1, 0]]
    assert make_pairs(rewards, "margin", 0.15).tolist() == [[0, 1, 0], [0, 1, 2], [0, 2, 0]]
    assert make_pairs(rewards, "best_worst", 0.5).tolist() == []


def test_dpo_raises_the_toy_reward_over_rounds(tmp_path):
    config = TrainConfig(
        out_dir=str(tmp_path),
        steps=60,
        batch_size=8,
        lr=1e-2,
        warmup_steps=4,
        log_every=4,
        checkpoint_every=0,
        progress=False,
        device="cpu",
        grad_clip=1.0,
    )
    dpo = DPOConfig(beta=0.5, rollouts=8, prompts_per_round=8, steps_per_round=2, temperature=1.0)
    start = initial_model(MODEL, seed=0)
    reference = PromptSet(*[t.clone() for t in (prompts().text, prompts().text_mask, prompts().index)])
    tuned = train_dpo(start, prompts(), first_channel_mean, config, dpo, validation_prompts=reference)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    rewards = [r["round_reward_mean"] for r in log if r["kind"] == "train"]
    early, late = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert late > early + 0.3, rewards
    eps = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    text = prompts().text.repeat(8, 1, 1)
    before = first_channel_mean(initial_model(MODEL, seed=0).sample(text, eps, temperature=1.0), None).mean()
    after = first_channel_mean(tuned.sample(text, eps, temperature=1.0), None).mean()
    assert after > before + 0.3
    assert log[-1]["kind"] == "validation" and log[-1]["val_reward_mean"] > 0.3


class Crash(RuntimeError):
    pass


def test_killed_dpo_run_resumes_to_the_same_weights(tmp_path):
    dpo = DPOConfig(beta=0.5, rollouts=4, prompts_per_round=4, steps_per_round=4)

    def run(out, crash_at=None, seed=0):
        config = TrainConfig(
            out_dir=str(tmp_path / out),
            steps=7,
            batch_size=4,
            lr=1e-2,
            warmup_steps=1,
            checkpoint_every=2,
            progress=False,
            device="cpu",
            ema_decay=0.8,
        )
        objective = DPOObjective(initial_model(MODEL, seed=seed), prompts(), first_channel_mean, dpo, config)
        if crash_at is not None:
            plain = objective.batch
            objective.batch = lambda step, runtime: (_ for _ in ()).throw(Crash()) if step == crash_at else plain(step, runtime)
        return train(initial_model(MODEL, seed=seed), objective, config)

    whole = run("whole")
    with pytest.raises(Crash):
        run("killed", crash_at=3)  # the checkpoint at step 2 is in the middle of round 0
    with pytest.raises(TrainingError, match="starting weights"):
        run("killed", seed=7)  # another start is another run
    torch.manual_seed(1234)  # the resumed process starts from another RNG state; everything comes from the checkpoint
    resumed = run("killed")
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
