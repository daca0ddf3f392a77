"""Training options are checked where they are declared (every value finite and in its range, for the library and
the command line alike), and a run whose loss or gradient turns non-finite stops at once: strict JSON in the log,
the last good checkpoint kept, no prior, and a message that names the likely cause."""

import json
import math

import pytest
import torch
from test_train_likelihood import MODEL, config, make_dataset, one_thread  # noqa: F401  (fixture)

from noisear.cli import main
from noisear.train.data import ShardDataset
from noisear.train.dpo import DPOConfig
from noisear.train.likelihood import LikelihoodObjective
from noisear.train.loop import TrainConfig, initial_model, train
from noisear.train.runs import TrainingError, read_checkpoint

BAD_TRAIN = [
    ("lr", math.inf),
    ("lr", math.nan),
    ("lr", 0.0),
    ("lr", -1e-3),
    ("lr", 1e30),
    ("min_lr_ratio", math.nan),
    ("min_lr_ratio", 2.0),
    ("warmup_steps", -5),
    ("weight_decay", math.nan),
    ("beta1", 1.5),
    ("beta2", math.nan),
    ("beta2", 1.0),
    ("adam_eps", 0.0),
    ("adam_eps", math.inf),
    ("grad_clip", -1.0),
    ("grad_clip", math.nan),
    ("ema_decay", math.nan),
    ("ema_decay", 1.0),
    ("seed", -1),
    ("seed", 2**70),
    ("validation_fraction", math.nan),
    ("validation_seed_fraction", 1.0),
    ("log_every", 0),
    ("log_every", -1),
    ("val_every", -1),
    ("checkpoint_every", -1),
    ("steps", 0),
    ("batch_size", 0),
    ("steps", 2.5),
    ("steps", True),
    ("bf16", "yes"),
    ("device", "foo"),
    ("device", "cuda:x"),
]


@pytest.mark.parametrize("name, value", BAD_TRAIN, ids=[f"{n}={v}" for n, v in BAD_TRAIN])
def test_train_config_refuses_a_value_out_of_range_naming_the_option(name, value):
    with pytest.raises(TrainingError, match=name):
        TrainConfig(**{name: value})


BAD_DPO = [
    ("beta", math.nan),
    ("beta", 0.0),
    ("beta", -1.0),
    ("temperature", math.nan),
    ("temperature", 0.0),
    ("temperature", 11.0),
    ("margin", math.nan),
    ("margin", -1.0),
    ("rollouts", 1),
    ("steps_per_round", 0),
    ("prompts_per_round", 0),
    ("pairing", "random"),
]


@pytest.mark.parametrize("name, value", BAD_DPO, ids=[f"{n}={v}" for n, v in BAD_DPO])
def test_dpo_config_refuses_a_value_out_of_range_naming_the_option(name, value):
    with pytest.raises(TrainingError, match=name):
        DPOConfig(**{name: value})


def test_the_defaults_and_the_edges_of_every_range_are_accepted():
    TrainConfig()
    DPOConfig()
    TrainConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=0, beta1=0.0, grad_clip=0.0, seed=2**32 - 1, checkpoint_every=0)
    DPOConfig(temperature=10.0, margin=0.0, rollouts=2)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999", "fast"])
def test_the_command_line_refuses_non_finite_numbers_where_they_are_typed(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exited:
        main(["train", str(tmp_path), "--out", str(tmp_path / "run"), f"--lr={value}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --lr" in err and ("finite" in err or "a number" in err) and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_help_shows_the_values_an_option_accepts(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "peak learning rate of AdamW (default: 0.0001; accepts (0, 1])" in help_text


def strict_records(path):
    """The log's records, refusing NaN, Infinity and -Infinity (not JSON)."""
    return [
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {path}")) for line in path.read_text().splitlines()
    ]


class NaNGradient(torch.autograd.Function):
    """Passes a value through and returns NaN as its gradient."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, gradient):
        return gradient * math.nan


def poisoned(dataset, c, at_step, where):
    """A likelihood objective whose loss (or gradient) turns NaN at ``at_step``."""
    objective = LikelihoodObjective(dataset, c)
    plain_loss, calls = objective.loss, []

    def loss(log_prob, batch):
        value, metrics = plain_loss(log_prob, batch)
        calls.append(1)
        if len(calls) == at_step + 1:
            if where == "loss":
                return value * math.nan, {**metrics, "train_loss": math.nan}
            return NaNGradient.apply(value), metrics
        return value, metrics

    objective.loss = loss
    return objective


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_step_stops_the_run_keeps_the_last_checkpoint_and_writes_no_prior(tmp_path, where):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    c = config(tmp_path, steps=12, checkpoint_every=4, log_every=1)
    objective = poisoned(ShardDataset(tmp_path / "data"), c, at_step=6, where=where)
    with pytest.raises(TrainingError, match="stopped at step 7: .*Likely cause: a learning rate too high .*start again"):
        train(initial_model(MODEL), objective, c)
    out = tmp_path / "run"
    assert read_checkpoint(out / "checkpoint.safetensors")["step"] == 4
    assert not (out / "prior.safetensors").exists()
    records = strict_records(out / "log.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["kind"] == "stopped" and records[-1]["step"] == 7


def test_a_first_step_that_is_not_finite_blames_the_data_or_the_start(tmp_path):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    c = config(tmp_path, steps=4)
    with pytest.raises(TrainingError, match="stopped at step 1: the loss is nan. Likely cause: the data or the starting"):
        train(initial_model(MODEL), poisoned(ShardDataset(tmp_path / "data"), c, at_step=0, where="loss"), c)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["log.jsonl", "run.json"]


def test_the_command_line_reports_a_diverged_run_in_one_line(tmp_path, capsys, monkeypatch):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    plain = LikelihoodObjective.loss
    monkeypatch.setattr(
        LikelihoodObjective,
        "loss",
        lambda self, log_prob, batch: (lambda v: (v[0] * math.nan, v[1]))(plain(self, log_prob, batch)),
    )
    argv = [
        "train",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "3",
        "--family",
        "none",
        "--patch-size",
        "2",
    ]
    argv += ["--d-model", "16", "--d-ff", "32", "--device", "cpu", "--no-progress", "--batch-size", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training stopped at step 1") and err.count("\n") == 1, err
