"""Run folders: a run resumes only into a folder that holds the same run (same data, start and settings), anything
else is refused with what differs and nothing written; no output replaces an input; the checkpoint is safetensors
plus JSON, never a pickle."""

import hashlib
import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from test_train_likelihood import MODEL, config, make_dataset, one_thread, write_known_shift  # noqa: F401  (fixture)

from noisear.cli import main
from noisear.train.data import ShardDataset
from noisear.train.likelihood import LikelihoodObjective, train_likelihood
from noisear.train.loop import initial_model, train
from noisear.train.runs import TrainingError, read_checkpoint, write_checkpoint


def digests(folder):
    """Every file under ``folder`` -> sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run(tmp_path, data="data", out="run", init=None, model=MODEL, control_variate=None, **changes):
    c = config(tmp_path, **{"out_dir": str(tmp_path / out), "steps": 4, "checkpoint_every": 2, **changes})
    return train_likelihood(tmp_path / data, c, model_config=None if init else model, init=init, control_variate=control_variate)


@pytest.fixture
def data(tmp_path):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    make_dataset(tmp_path / "other", prompts=12, per_prompt=4, seed=1)
    return tmp_path


def test_another_dataset_into_a_run_folder_is_refused_and_changes_nothing(data):
    run(data)
    before = digests(data / "run")
    with pytest.raises(TrainingError, match="holds another run .*the data .*nothing was changed"):
        run(data, data="other")
    assert digests(data / "run") == before


def test_init_into_a_folder_that_holds_a_run_is_refused_instead_of_resuming_it(data):
    run(data, out="first")
    run(data)
    before = digests(data / "run")
    with pytest.raises(TrainingError, match="the starting weights"):
        run(data, init=data / "first/prior.safetensors")
    assert digests(data / "run") == before


SHAPING = {
    "lr": 1e-3,
    "steps": 6,
    "batch_size": 4,
    "seed": 1,
    "warmup_steps": 1,
    "min_lr_ratio": 0.5,
    "weight_decay": 0.1,
    "beta1": 0.8,
    "beta2": 0.99,
    "adam_eps": 1e-6,
    "grad_clip": 0.5,
    "ema_decay": 0.5,
    "validation_fraction": 0.3,
    "validation_seed_fraction": 0.1,
    "bf16": False,
}


@pytest.mark.parametrize("name", [*SHAPING, "control_variate", "d_model"])
def test_a_setting_that_shapes_the_result_cannot_change_on_resume(data, name):
    if name == "control_variate":  # needs data whose seeds say what the starting noises were
        write_known_shift(data / "known", prompts=12, per_prompt=4)
    run(data, data="known" if name == "control_variate" else "data")
    before = digests(data / "run")
    if name == "control_variate":
        changed = {"data": "known", "control_variate": False}
    elif name == "d_model":
        changed = {"model": replace(MODEL, d_model=32)}
    else:
        changed = {name: SHAPING[name]}
    with pytest.raises(TrainingError, match=f"holds another run .*{name}"):
        run(data, **changed)
    assert digests(data / "run") == before


def test_reporting_settings_may_change_on_resume_and_the_result_stays_bitwise(data):
    whole = run(data, out="whole", ema_decay=0.9, steps=8)
    c = config(data, out_dir=str(data / "resumed"), steps=8, checkpoint_every=2, ema_decay=0.9)
    objective = LikelihoodObjective(ShardDataset(data / "data"), c)
    plain_batch = objective.batch

    def crash(step, runtime):
        if step == 5:
            raise KeyboardInterrupt
        return plain_batch(step, runtime)

    objective.batch = crash
    with pytest.raises(KeyboardInterrupt):
        train(initial_model(MODEL), objective, c)
    changed = replace(c, log_every=3, val_every=2, checkpoint_every=3, progress=True, device="cpu")
    resumed = train(initial_model(MODEL), LikelihoodObjective(ShardDataset(data / "data"), changed), changed)
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


def test_the_same_command_on_a_finished_run_rewrites_nothing_and_returns_its_prior(data):
    first = run(data)
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in (data / "run").iterdir()}
    again = run(data)
    assert {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in (data / "run").iterdir()} == before
    for (key, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), key


def test_the_same_data_moved_elsewhere_is_the_same_run(data):
    run(data)
    (data / "data").rename(data / "moved")
    run(data, data="moved")  # resumes: nothing to do


def test_a_folder_with_run_files_but_no_run_json_is_refused(data):
    (data / "run").mkdir()
    (data / "run" / "prior.safetensors").write_bytes(b"someone's prior")
    with pytest.raises(TrainingError, match="no run.json"):
        run(data)
    assert (data / "run" / "prior.safetensors").read_bytes() == b"someone's prior"


# An output never replaces an input ------------------------------------------------------------------------
def test_train_init_from_the_output_folders_own_prior_is_refused(data):
    run(data, out="R")
    before = digests(data / "R")
    with pytest.raises(TrainingError, match="prior.safetensors is the input .*would replace that input"):
        run(data, out="R", init=data / "R/prior.safetensors")
    assert digests(data / "R") == before


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_an_output_that_is_an_input_through_a_link_is_refused(data, link):
    run(data, out="S")
    (data / "R").mkdir()
    (os.symlink if link == "symlink" else os.link)(data / "S/prior.safetensors", data / "R/prior.safetensors")
    before = digests(data / "S")
    with pytest.raises(TrainingError, match="is the input"):
        run(data, out="R", init=data / "S/prior.safetensors")
    assert digests(data / "S") == before
    assert os.path.samefile(data / "R/prior.safetensors", data / "S/prior.safetensors")


@pytest.mark.parametrize("how", ["the same path", "a symlink"])
def test_the_data_folder_is_never_the_output_folder(data, how):
    if how == "a symlink":
        os.symlink(data / "data", data / "link")
    with pytest.raises(TrainingError, match="is the input .*the same folder"):
        run(data, out="data" if how == "the same path" else "link")
    assert sorted(p.name for p in (data / "data").iterdir()) == ["shard-00000.safetensors"]


def test_dpo_into_the_folder_of_the_prior_it_starts_from_is_refused(data, capsys):
    run(data, out="R")
    before = digests(data / "R")
    argv = [
        "dpo",
        str(data / "R/prior.safetensors"),
        "--prompts",
        str(data / "data"),
        "--scorer",
        "test_train_cli:first_channel_mean",
        "--out",
        str(data / "R"),
        "--steps",
        "2",
        "--prompts-per-round",
        "4",
        "--rollouts",
        "4",
        "--device",
        "cpu",
        "--no-progress",
        "--batch-size",
        "4",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "would replace that input" in err and err.count("\n") == 1, err
    assert digests(data / "R") == before


# The checkpoint file ---------------------------------------------------------------------------------------
def test_the_checkpoint_is_safetensors_with_json_and_round_trips_exactly(tmp_path):
    state = {
        "step": 3,
        "optimizer": {
            "state": {0: {"exp_avg": torch.randn(3)}, 1: {"step": torch.tensor(2.0)}},
            "groups": [{"betas": (0.9, 0.99)}],
        },
        "rng": [{"torch": torch.get_rng_state(), "gauss_next": None, "cached": 0.1 + 0.2}],
        "weights": {"a": torch.randn(2, 2, dtype=torch.bfloat16), "b": torch.arange(4)},
    }
    write_checkpoint(tmp_path / "checkpoint.safetensors", state)
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as handle:  # a plain safetensors file
        assert json.loads(handle.metadata()["state"])["step"] == 3
    loaded = read_checkpoint(tmp_path / "checkpoint.safetensors")
    assert set(loaded["optimizer"]["state"]) == {0, 1} and loaded["optimizer"]["groups"][0]["betas"] == (0.9, 0.99)
    assert loaded["rng"][0]["cached"] == 0.1 + 0.2 and loaded["rng"][0]["gauss_next"] is None
    assert torch.equal(loaded["rng"][0]["torch"], state["rng"][0]["torch"])
    for key in ("a", "b"):
        assert (
            torch.equal(loaded["weights"][key], state["weights"][key])
            and loaded["weights"][key].dtype == state["weights"][key].dtype
        )


def test_no_file_of_a_run_is_a_pickle(data):
    run(data, out="R", ema_decay=0.5)
    for path in (data / "R").iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", path.name  # pickle protocol 2+ / torch.save's zip
    assert sorted(p.name for p in (data / "R").iterdir()) == [
        "checkpoint.safetensors",
        "log.jsonl",
        "prior.safetensors",
        "run.json",
    ]


def test_dpo_into_a_likelihood_run_says_the_method_differs(data, capsys):
    run(data, out="S")
    run(data, out="R")
    argv = ["dpo", str(data / "S/prior.safetensors"), "--prompts", str(data / "data"), "--scorer"]
    argv += ["test_train_cli:first_channel_mean", "--out", str(data / "R"), "--steps", "4", "--batch-size", "8"]
    argv += ["--prompts-per-round", "4", "--rollouts", "4", "--device", "cpu", "--no-progress", "--validation-fraction", "0.2"]
    before = digests(data / "R")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "it differs in the method (likelihood there, dpo now)" in err and "(none)" not in err, err
    assert digests(data / "R") == before
