"""A user's week with the training commands: the same commands again, other data or settings into the same folders,
replaced files, changed data, runs killed (SIGINT and SIGKILL of a real process) and resumed. After every step no
earlier result is lost or changed (file digests), and every resumed run ends bitwise where an uninterrupted run
ends. Tiny configs; a subprocess only where a process must be killed."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_train_likelihood import make_dataset, one_thread  # noqa: F401  (fixture)

from noisear.cli import main
from noisear.train.likelihood import LikelihoodObjective

REPO = Path(__file__).resolve().parents[1]
NETWORK = ["--family", "none", "--patch-size", "2", "--d-model", "16", "--d-ff", "32", "--dropout", "0.1"]
SETTINGS = ["--device", "cpu", "--no-progress", "--batch-size", "8", "--warmup-steps", "2", "--log-every", "1"]
SETTINGS += ["--validation-fraction", "0.2", "--checkpoint-every", "2", "--ema-decay", "0.9"]


def digests(*folders):
    """Every file under the folders -> sha256 of its bytes."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


def train(data, out, *extra, steps=6, network=NETWORK):
    """The train command; ``network=()`` with --init (the prior is the checkpoint's)."""
    return ["train", str(data), "--out", str(out), "--steps", str(steps), *network, *SETTINGS, *map(str, extra)]


def dpo(prior, data, out, *extra):
    return [
        "dpo",
        str(prior),
        "--prompts",
        str(data),
        "--scorer",
        "test_train_cli:first_channel_mean",
        "--out",
        str(out),
        "--steps",
        "3",
        "--prompts-per-round",
        "4",
        "--rollouts",
        "4",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def assert_same_prior(a, b):
    """Bitwise the same tensors and metadata (safetensors may order its header differently from file to file)."""
    with safe_open(str(a), framework="pt") as first, safe_open(str(b), framework="pt") as second:
        assert first.metadata() == second.metadata() and sorted(first.keys()) == sorted(second.keys())
        for key in first.keys():
            x, y = first.get_tensor(key), second.get_tensor(key)
            assert x.dtype == y.dtype and torch.equal(x, y), key


def refused(argv, capsys, message):
    """The command exits with status 2 and one line on stderr that holds ``message``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.fixture
def week(tmp_path, capsys):
    make_dataset(tmp_path / "data", prompts=12, per_prompt=4)
    make_dataset(tmp_path / "other", prompts=12, per_prompt=4, seed=1)
    assert main(train(tmp_path / "data", tmp_path / "sft")) == 0
    capsys.readouterr()
    return tmp_path


def test_monday_the_same_command_other_data_and_other_settings(week, capsys):
    kept = digests(week / "sft", week / "data")
    assert main(train(week / "data", week / "sft")) == 0  # finished: nothing redone, nothing rewritten
    assert "NLL nats/dim: prior" in capsys.readouterr().out  # the held-out report of that run
    refused(train(week / "other", week / "sft"), capsys, "holds another run (it differs in the data")
    refused(train(week / "data", week / "sft", "--lr", "0.01"), capsys, "lr 0.0001 there, 0.01 now")
    refused(train(week / "data", week / "sft", steps=10), capsys, "steps 6 there, 10 now")
    # the choices made for the data are part of the network: another text limit or window is another run
    refused(train(week / "data", week / "sft", "--text-tokens", "8"), capsys, "text_tokens 2 there, 8 now")
    refused(train(week / "data", week / "sft", "--window", "0"), capsys, "window 2 there, 0 now")
    refused(train(week / "data", week / "sft", "--patch-hidden-dim", "16"), capsys, "patch_hidden_dim 8 there, 16 now")
    init = ("--init", week / "sft/prior.safetensors")
    refused(train(week / "data", week / "sft", *init, network=()), capsys, "would replace that input")
    refused(train(week / "data", week / "data"), capsys, "is the input")
    refused(train(week / "data", week / "longer", *init), capsys, "describe a new prior; with --init")
    assert digests(week / "sft", week / "data") == kept
    assert main(train(week / "data", week / "longer", *init, steps=10, network=())) == 0  # the way on
    assert digests(week / "sft", week / "data") == kept


def test_tuesday_dpo_never_replaces_the_prior_it_starts_from(week, capsys):
    kept = digests(week / "sft")
    refused(dpo(week / "sft/prior.safetensors", week / "data", week / "sft"), capsys, "would replace that input")
    (week / "copy").mkdir()
    os.link(week / "sft/prior.safetensors", week / "copy/prior.safetensors")  # the same file under another name
    refused(dpo(week / "copy/prior.safetensors", week / "data", week / "copy"), capsys, "would replace that input")
    assert main(dpo(week / "sft/prior.safetensors", week / "data", week / "dpo")) == 0
    tuned = digests(week / "dpo")
    assert main(dpo(week / "sft/prior.safetensors", week / "data", week / "dpo")) == 0  # again: nothing changes
    refused(dpo(week / "sft/prior.safetensors", week / "data", week / "dpo", "--beta", "0.5"), capsys, "beta 0.1 there")
    assert digests(week / "dpo") == tuned and digests(week / "sft") == kept


def test_wednesday_replaced_files_are_left_alone(week, capsys):
    mine = b"my own prior, copied over the run's"
    (week / "sft/prior.safetensors").write_bytes(mine)
    assert main(train(week / "data", week / "sft")) == 0  # the run is finished: its folder is not rewritten
    assert (week / "sft/prior.safetensors").read_bytes() == mine
    shutil.copy(week / "sft/run.json", week / "stray.json")
    (week / "sft/run.json").write_text("{}")  # a run.json that is not this run's: refused, nothing written
    kept = digests(week / "sft")
    refused(train(week / "data", week / "sft"), capsys, "holds another run")
    assert digests(week / "sft") == kept


def test_thursday_the_data_changes(week, capsys, monkeypatch):
    kept = digests(week / "sft")
    shutil.copy(week / "other/shard-00000.safetensors", week / "data/shard-00001.safetensors")  # collected more
    refused(train(week / "data", week / "sft"), capsys, "the data")
    assert digests(week / "sft") == kept

    plain_batch = LikelihoodObjective.batch

    def batch_after_a_swap(self, step, runtime):
        if step == 3:  # a shard is replaced while the run reads it
            shutil.copy(week / "other/shard-00000.safetensors", week / ".swap")
            os.replace(week / ".swap", week / "data/shard-00000.safetensors")
        return plain_batch(self, step, runtime)

    monkeypatch.setattr(LikelihoodObjective, "batch", batch_after_a_swap)
    refused(train(week / "data", week / "changing"), capsys, "was replaced, changed or removed after the dataset was opened")
    assert sorted(p.name for p in (week / "changing").iterdir()) == ["checkpoint.safetensors", "log.jsonl", "run.json"]


def start(argv, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "noisear", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(path, child, seconds=120):
    deadline = time.time() + seconds
    while not path.exists():
        assert child.poll() is None, child.communicate()
        assert time.time() < deadline, f"no {path.name} after {seconds} s"
        time.sleep(0.01)


@pytest.mark.parametrize("kill", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_friday_killed_runs_resume_to_the_uninterrupted_result(week, capsys, kill):
    steps = 300  # long enough to be killed in the middle (at the first checkpoint, step 2 or soon after)
    assert main(train(week / "data", week / "whole", "--checkpoint-every", "0", steps=steps)) == 0
    child = start(train(week / "data", week / "killed", steps=steps), week)
    wait_for(week / "killed/checkpoint.safetensors", child)
    child.send_signal(kill)
    _, err = child.communicate(timeout=120)
    if kill == signal.SIGINT:  # the step in progress is finished and saved; one line says how to go on
        assert child.returncode == 130 and "Traceback" not in err, err
        assert "interrupted: stopped after step" in err and "run the same command to resume" in err
    else:
        assert child.returncode == -signal.SIGKILL
    assert not (week / "killed/prior.safetensors").exists()
    kept = digests(week / "sft")
    refused(train(week / "data", week / "killed", "--seed", "1", steps=steps), capsys, "holds another run")
    assert main(train(week / "data", week / "killed", "--checkpoint-every", "0", steps=steps)) == 0  # resumes
    assert_same_prior(week / "killed/prior.safetensors", week / "whole/prior.safetensors")
    assert [p.name for p in (week / "killed").iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert digests(week / "sft") == kept


def test_saturday_evaluations_are_not_replaced_without_overwrite(week, capsys):
    argv = ["eval", "--prompts", str(week / "data"), "--split", "all", "--max-prompts", "3", "--seeds", "2"]
    argv += ["--first-seed", "1000", "--backend", "test_train_cli:backend", "--scorer", "b=test_train_cli:brightness"]
    argv += ["--prior", f"sft={week / 'sft/prior.safetensors'}", "--temperature", "1", "--out", str(week / "eval")]
    assert main(argv) == 0
    kept = digests(week / "eval", week / "sft")
    refused([*argv[:-1], str(week / "data")], capsys, "is the input")  # never into the data it reads
    refused(argv, capsys, "already holds")  # the earlier evaluation is never replaced without --overwrite
    assert digests(week / "eval", week / "sft") == kept
    assert main([*argv, "--overwrite"]) == 0
