"""Interrupted training: Ctrl-C stops at a step boundary so resume is bitwise exact (likelihood and
DPO), a second Ctrl-C stops at once without saving, log.jsonl never repeats records after a resume,
and run files get normal permissions."""

import json
import os
import signal
import stat
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from test_train_dpo import MODEL as DPO_MODEL
from test_train_dpo import first_channel_mean, prompts
from test_train_likelihood import MODEL, REPO, config, make_dataset, one_thread  # noqa: F401  (fixture)

from noisear import io
from noisear.toy.checkpoints import save_net
from noisear.train.data import ShardDataset
from noisear.train.dpo import DPOConfig, DPOObjective
from noisear.train.likelihood import LikelihoodObjective
from noisear.train.loop import TrainConfig, initial_model, train
from noisear.train.runs import TrainingError, read_checkpoint

DROPOUT = replace(MODEL, dropout=0.2)  # dropout makes the RNG state part of what must resume exactly

CHILD = """
import os, sys, time
from dataclasses import replace
sys.path.insert(0, "tests")
from noisear import io
from noisear.toy.checkpoints import save_net
from noisear.train.data import ShardDataset
from noisear.train.dpo import DPOConfig, DPOObjective
from noisear.train.likelihood import LikelihoodObjective
from noisear.train.loop import TrainConfig, initial_model, train
from test_train_likelihood import MODEL

data, out = sys.argv[1], sys.argv[2]
c = TrainConfig(out_dir=out, steps=12, batch_size=8, lr=3e-3, warmup_steps=2, log_every=2, checkpoint_every=4,
                validation_fraction=0.2, progress=False, device="cpu", ema_decay=0.9)
objective = LikelihoodObjective(ShardDataset(data), c)
plain_loss, calls = objective.loss, []

def slow_loss(log_prob, batch):
    loss, metrics = plain_loss(log_prob, batch)  # forward done, backward and update to come
    calls.append(1)
    if len(calls) == 6:  # step 5
        print("mid-step", flush=True)
        while not os.path.exists(out + "/sent"):  # the parent's SIGINT arrives while we wait here
            time.sleep(0.01)
    return loss, metrics

objective.loss = slow_loss
train(initial_model(replace(MODEL, dropout=0.2)), objective, c)
"""


def uninterrupted(tmp_path, dataset, **changes):
    c = config(tmp_path, steps=12, ema_decay=0.9, out_dir=str(tmp_path / "whole"), **changes)
    return train(initial_model(DROPOUT), LikelihoodObjective(dataset, c), c)


def assert_same_weights(a, b):
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key


def test_sigint_mid_step_stops_at_the_step_boundary_and_resumes_to_the_same_weights(tmp_path):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    dataset = ShardDataset(tmp_path / "data")
    out = tmp_path / "interrupted"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "data"), str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "mid-step\n", child.stderr.read()  # five steps done, the sixth half done
    child.send_signal(signal.SIGINT)
    (out / "sent").touch()
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode != 0 and "KeyboardInterrupt" in stderr, stderr
    assert "stopping after this step" in stdout
    stopped = read_checkpoint(out / "checkpoint.safetensors")["step"]
    assert stopped == 6  # not the periodic checkpoint at 4: the step in progress was finished and saved
    assert not (out / "prior.safetensors").exists()

    c = config(tmp_path, steps=12, ema_decay=0.9, out_dir=str(out))
    torch.manual_seed(1234)  # the resumed process starts from another RNG state and another model object
    resumed = train(initial_model(DROPOUT), LikelihoodObjective(dataset, c), c)
    assert_same_weights(uninterrupted(tmp_path, dataset), resumed)


def test_a_second_sigint_stops_at_once_and_the_last_checkpoint_still_resumes_exactly(tmp_path):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    dataset = ShardDataset(tmp_path / "data")
    c = config(tmp_path, steps=12, ema_decay=0.9, out_dir=str(tmp_path / "twice"))
    objective = LikelihoodObjective(dataset, c)
    plain_loss, calls = objective.loss, []

    def twice_interrupted_loss(log_prob, batch):
        calls.append(1)
        if len(calls) == 7:  # step 6, before its update
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return plain_loss(log_prob, batch)

    objective.loss = twice_interrupted_loss
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(initial_model(DROPOUT), objective, c)
    assert signal.getsignal(signal.SIGINT) is handler  # the trainer's handler is removed again
    assert read_checkpoint(tmp_path / "twice/checkpoint.safetensors")["step"] == 4  # the half step is not saved
    resumed = train(initial_model(DROPOUT), LikelihoodObjective(dataset, c), c)
    assert_same_weights(uninterrupted(tmp_path, dataset), resumed)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_time(entries):
    return [{k: v for k, v in entry.items() if k != "elapsed_s"} for entry in entries]


class Crash(RuntimeError):
    pass


def test_the_log_of_a_resumed_run_equals_the_uninterrupted_log(tmp_path):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    dataset = ShardDataset(tmp_path / "data")
    uninterrupted(tmp_path, dataset, log_every=3, val_every=3)
    c = config(tmp_path, steps=12, ema_decay=0.9, out_dir=str(tmp_path / "crashed"), log_every=3, val_every=3)
    objective = LikelihoodObjective(dataset, c)
    plain_batch = objective.batch

    def crashing_batch(step, runtime):
        if step == 11:  # records of steps 6 and 9 are logged after the checkpoint at step 8
            raise Crash()
        return plain_batch(step, runtime)

    objective.batch = crashing_batch
    with pytest.raises(Crash):
        train(initial_model(DROPOUT), objective, c)
    assert [r["step"] for r in records(tmp_path / "crashed/log.jsonl")] == [3, 3, 6, 6, 9, 9]
    train(initial_model(DROPOUT), LikelihoodObjective(dataset, c), c)
    expected = without_time(records(tmp_path / "whole/log.jsonl"))
    assert without_time(records(tmp_path / "crashed/log.jsonl")) == expected
    train(initial_model(DROPOUT), LikelihoodObjective(dataset, c), c)  # resuming a finished run redoes only the end
    assert without_time(records(tmp_path / "crashed/log.jsonl")) == expected


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_afresh(tmp_path):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    dataset = ShardDataset(tmp_path / "data")
    whole = uninterrupted(tmp_path, dataset)
    c = config(tmp_path, steps=12, ema_decay=0.9, out_dir=str(tmp_path / "early"))
    objective = LikelihoodObjective(dataset, c)
    plain_batch = objective.batch
    objective.batch = lambda step, runtime: (_ for _ in ()).throw(Crash()) if step == 3 else plain_batch(step, runtime)
    with pytest.raises(Crash):
        train(initial_model(DROPOUT), objective, c)
    assert not (tmp_path / "early/checkpoint.safetensors").exists() and records(tmp_path / "early/log.jsonl")
    assert_same_weights(whole, train(initial_model(DROPOUT), LikelihoodObjective(dataset, c), c))
    assert without_time(records(tmp_path / "early/log.jsonl")) == without_time(records(tmp_path / "whole/log.jsonl"))


def test_a_failed_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    c = config(tmp_path, steps=4, out_dir=str(tmp_path / "full"))

    def disk_full(tensors, path, metadata):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("noisear.train.runs.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        train(initial_model(MODEL), LikelihoodObjective(ShardDataset(tmp_path / "data"), c), c)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["log.jsonl", "run.json"]


def test_run_files_get_normal_permissions_from_the_umask(tmp_path):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    c = config(tmp_path, steps=4, out_dir=str(tmp_path / "run"))
    previous = os.umask(0o022)
    try:
        train(initial_model(MODEL), LikelihoodObjective(ShardDataset(tmp_path / "data"), c), c)
        save_net(torch.nn.Linear(2, 2), tmp_path / "run" / "toy_net.safetensors")  # what demo --retrain writes
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "run").iterdir()}
    assert modes == {
        "checkpoint.safetensors": 0o644,
        "log.jsonl": 0o644,
        "prior.safetensors": 0o644,
        "run.json": 0o644,
        "toy_net.safetensors": 0o644,
    }


def test_ctrl_c_during_a_dpo_rollout_stops_after_that_step_and_resumes_exactly(tmp_path):
    dpo = DPOConfig(beta=0.5, rollouts=4, prompts_per_round=4, steps_per_round=4)
    scored, interrupt_at = [], [2]  # the rollout of round 1, inside step 4

    def reward(noise, prompt_set):  # one scorer for every run: the scorer is part of a run's identity
        scored.append(1)
        if len(scored) == interrupt_at[0]:
            os.kill(os.getpid(), signal.SIGINT)
        return first_channel_mean(noise, prompt_set)

    def run(out, seed=0):
        c = TrainConfig(
            out_dir=str(tmp_path / out),
            steps=7,
            batch_size=4,
            lr=1e-2,
            warmup_steps=1,
            checkpoint_every=0,
            progress=False,
            device="cpu",
            ema_decay=0.8,
        )
        objective = DPOObjective(initial_model(DPO_MODEL, seed=seed), prompts(), reward, dpo, c)
        return train(initial_model(DPO_MODEL, seed=seed), objective, c)

    with pytest.raises(KeyboardInterrupt):
        run("interrupted")
    assert read_checkpoint(tmp_path / "interrupted/checkpoint.safetensors")["step"] == 5  # mid round 1
    interrupt_at[0] = None
    whole = run("whole")
    torch.manual_seed(1234)  # another RNG state: everything comes from the checkpoint
    assert_same_weights(whole, run("interrupted"))


@pytest.mark.parametrize("point", ["open", "close", "write", "chmod", "replace"])
def test_ctrl_c_at_any_point_of_an_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch, point):
    real = {"open": os.open, "close": os.close, "chmod": os.chmod, "replace": os.replace}

    def interrupted(name):
        def call(*args, **kwargs):
            real[name](*args, **kwargs)  # the step happens, then Ctrl-C arrives
            raise KeyboardInterrupt

        return call

    def write(temporary):
        temporary.write_bytes(b"new")
        if point == "write":
            raise KeyboardInterrupt

    (tmp_path / "file").write_bytes(b"old")
    if point != "write":
        monkeypatch.setattr(f"noisear.io.os.{point}", interrupted(point))
    with pytest.raises(KeyboardInterrupt):
        io.write_atomically(tmp_path / "file", write)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert (tmp_path / "file").read_bytes() == (b"new" if point == "replace" else b"old")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04" + bytes(100)])
def test_a_damaged_or_foreign_checkpoint_is_a_clear_error_and_stays(tmp_path, content):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    c = config(tmp_path, steps=4, checkpoint_every=2, out_dir=str(tmp_path / "run"))
    objective = LikelihoodObjective(ShardDataset(tmp_path / "data"), c)
    plain_batch = objective.batch
    objective.batch = lambda step, runtime: (_ for _ in ()).throw(Crash()) if step == 3 else plain_batch(step, runtime)
    with pytest.raises(Crash):
        train(initial_model(MODEL), objective, c)
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    checkpoint.write_bytes(content)
    with pytest.raises(TrainingError, match="cannot be read as a training checkpoint .*Nothing was changed"):
        train(initial_model(MODEL), LikelihoodObjective(ShardDataset(tmp_path / "data"), c), c)
    assert checkpoint.read_bytes() == content
    save_file({"x": torch.zeros(1)}, str(checkpoint), metadata={"format": "another-program"})
    with pytest.raises(TrainingError, match="is not a NoiseAR training checkpoint"):
        train(initial_model(MODEL), LikelihoodObjective(ShardDataset(tmp_path / "data"), c), c)


def test_a_checkpoint_pt_of_an_earlier_version_is_refused_and_kept(tmp_path):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    c = config(tmp_path, steps=4, out_dir=str(tmp_path / "old"))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoint.pt").write_bytes(b"an earlier version's pickle")
    with pytest.raises(TrainingError, match="earlier NoiseAR version .*does not read"):
        train(initial_model(MODEL), LikelihoodObjective(ShardDataset(tmp_path / "data"), c), c)
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["checkpoint.pt"]
