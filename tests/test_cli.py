"""`python -m noisear inspect / convert`: what a user sees, and one-line errors (exit code 2) for bad files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import TINY, hostile_pth, random_state_dict, write_pth, write_safetensors

import noisear
from noisear.cli import main
from noisear.toy.cli import recorded_command

REPO = Path(__file__).resolve().parents[1]


def printed_fields(text: str) -> dict[str, str]:
    """inspect's 'name   value' lines -> {name: value}."""
    return dict(line.split(None, 1) for line in text.strip().splitlines())


def test_inspect_prints_variant_config_parameters_and_dtype(published, published_pth, capsys):
    assert main(["inspect", str(published_pth)]) == 0
    fields = printed_fields(capsys.readouterr().out)
    expected_parameters = {"SDXL": "113,301,504", "Hunyuan-DiT": "115,400,704"}[published.variant]
    assert fields["variant"] == published.variant
    assert fields["parameters"] == expected_parameters
    assert fields["dtype"] == "float32"
    assert fields["file"].startswith(str(published_pth)) and fields["file"].endswith("MiB)")
    assert fields["family"] == {"SDXL": "sdxl", "Hunyuan-DiT": "hunyuan-dit"}[published.variant]
    for name, value in vars(published.config).items():
        assert name == "family" or fields[name] == str(value), name


def test_convert_then_inspect_shows_the_same_config(tmp_path, capsys):
    state = {key: value.half() for key, value in random_state_dict(TINY).items()}
    source, target = write_pth(state, tmp_path / "model.pth"), tmp_path / "model.safetensors"
    assert main(["convert", str(source), str(target)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {target} (own variant)"
    converted, config = noisear.read_checkpoint(target)
    assert config == TINY and all(torch.equal(converted[key], value) for key, value in state.items())
    assert main(["inspect", str(target)]) == 0
    fields = printed_fields(capsys.readouterr().out)
    assert (fields["variant"], fields["dtype"], fields["patch_size"], fields["channels"]) == ("own", "float16", "2", "3")


def random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "model.pth"
    path.write_bytes(bytes(range(256)) * 8)
    return path


def truncated_safetensors(tmp_path: Path) -> Path:
    path = write_safetensors(random_state_dict(TINY), tmp_path / "model.safetensors", TINY)
    path.write_bytes(path.read_bytes()[:500])
    return path


def missing_key(tmp_path: Path) -> Path:
    state = random_state_dict(TINY)
    del state["pos_encoding"]
    return write_pth(state, tmp_path / "model.pth")


def nan_weights(tmp_path: Path) -> Path:
    state = random_state_dict(TINY)
    state["ffn_norm.0.weight"][0] = float("nan")
    return write_pth(state, tmp_path / "model.pth")


def unknown_suffix(tmp_path: Path) -> Path:
    path = tmp_path / "model.ckpt.zip"
    path.write_bytes(b"PK")
    return path


BAD_FILES = {
    "random-bytes": (random_bytes, "not a readable PyTorch checkpoint"),
    "truncated-safetensors": (truncated_safetensors, "not a readable safetensors file"),
    "hostile-pickle": (lambda tmp_path: hostile_pth(tmp_path)[0], "could run code"),
    "missing-key": (missing_key, "missing 'pos_encoding'"),
    "nan": (nan_weights, "contains NaN or infinite values"),
    "unknown-suffix": (unknown_suffix, "unknown checkpoint type '.zip'"),
    "absent": (lambda tmp_path: tmp_path / "absent.pth", "no such checkpoint file"),
}


@pytest.mark.parametrize("command", ["inspect", "convert"])
@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_bad_file_gives_exit_code_2_and_a_one_line_error(tmp_path, capsys, command, bad):
    make, message = BAD_FILES[bad]
    path = make(tmp_path)
    argv = [command, str(path)] + ([str(tmp_path / "out.safetensors")] if command == "convert" else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
    assert not (tmp_path / "code-ran").exists() and not (tmp_path / "out.safetensors").exists()


def test_usage_errors_exit_with_code_2(capsys):
    for argv in ([], ["inspect"], ["convert", "only-one.pth"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert "usage: python -m noisear" in capsys.readouterr().err


def test_python_m_noisear_refuses_a_hostile_file_without_traceback(tmp_path):
    path, marker = hostile_pth(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "noisear", "inspect", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: refused to load model.pth") and done.stderr.count("\n") == 1
    assert not marker.exists()


def test_the_demos_manifest_records_the_command_without_absolute_paths():
    argv = ["demo", "--retrain", "--checkpoints", "/home/me/runs/ckpt", "--out=/tmp/demo out", "--seeds", "1", "2"]
    command = recorded_command(argv)
    assert command == "python -m noisear demo --retrain --checkpoints ckpt '--out=demo out' --seeds 1 2"
    assert recorded_command(["demo", "--retrain", "--checkpoints", "runs/ckpt"]).endswith("--checkpoints runs/ckpt")


# Errors: a user error is one line and exit status 2, anything else is a bug with its traceback ---------------
def failing_command(error):
    def run(args):
        raise error

    return run


@pytest.mark.parametrize(
    "error",
    [
        noisear.NoiseARCheckpointError("a bad checkpoint"),
        noisear.NoiseARConfigError("a bad config"),
        noisear.NoiseARInputError("a bad input"),
        PermissionError(13, "Permission denied", "/some/file"),
        ModuleNotFoundError("No module named 'plugin'"),
    ],
)
def test_a_user_error_is_one_line_with_exit_status_2(monkeypatch, capsys, error):
    monkeypatch.setattr("noisear.cli.run_inspect", failing_command(error))
    assert main(["inspect", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("a plain ValueError from deep inside"), KeyError("k")])
def test_any_other_error_is_a_bug_that_keeps_its_traceback(monkeypatch, capsys, error):
    monkeypatch.setattr("noisear.cli.run_inspect", failing_command(error))
    assert main(["inspect", "x"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "this is a bug" in err and type(error).__name__ in err


def test_error_lines_escape_control_and_bidi_characters(monkeypatch, capsys):
    monkeypatch.setattr("noisear.cli.run_inspect", failing_command(noisear.NoiseARCheckpointError("x\x1b[2Jy\u202ez\nw")))
    assert main(["inspect", "x"]) == 2
    err = capsys.readouterr().err
    assert err == "error: x\\x1b[2Jy\\u202ez\\nw\n"
