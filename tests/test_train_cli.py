"""The train, dpo, eval and data commands, run through python -m noisear's parser."""

import argparse
from dataclasses import dataclass, field, fields

import pytest
import torch
from test_train_likelihood import make_dataset, one_thread  # noqa: F401  (fixture)

from noisear.cli import build_parser, main
from noisear.config import NoiseARConfig
from noisear.train.cli import FROM_DATA, add_dataclass_options
from noisear.train.dpo import DPOConfig
from noisear.train.loop import TrainConfig

TINY = [
    "--patch-size",
    "2",
    "--d-model",
    "16",
    "--d-ff",
    "32",
    "--dropout",
    "0",
    "--device",
    "cpu",
    "--no-progress",
    "--batch-size",
    "8",
    "--warmup-steps",
    "1",
    "--log-every",
    "1",
    "--validation-fraction",
    "0.2",
]


def first_channel_mean(noise, prompts):
    return noise[:, 0].mean(dim=(1, 2))


def backend(noise, prompts):
    return torch.sigmoid(noise[:, :1]).expand(-1, 3, -1, -1)


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield name, child
                yield from subcommands(child)


def test_every_option_of_the_training_commands_is_explained():
    commands = dict(subcommands(build_parser()))
    assert {"train", "dpo", "eval", "data", "inspect"} <= set(commands)
    for name in ("train", "dpo", "eval", "inspect"):
        for action in commands[name]._actions:
            assert action.help and len(action.help) > 10, (name, action.dest)


def test_every_config_field_is_an_option_explained_by_its_field_metadata():
    commands = dict(subcommands(build_parser()))
    for command, classes in (("train", (NoiseARConfig, TrainConfig)), ("dpo", (DPOConfig, TrainConfig))):
        options = {action.dest: action for action in commands[command]._actions}
        for cls in classes:
            for item in fields(cls):
                if cls is NoiseARConfig and item.name in FROM_DATA:  # read from the dataset
                    assert item.name not in options and item.metadata["help"]
                    continue
                assert item.metadata["help"] in options[item.name].help, (command, item.name)
                if item.name != "out_dir":  # --out is required
                    assert options[item.name].default == item.default, (command, item.name)


def test_a_config_field_without_help_is_refused():
    @dataclass
    class Options:
        explained: int = field(default=1, metadata={"help": "a field with help"})
        unexplained: int = 2

    with pytest.raises(ValueError, match="Options.unexplained has no help"):
        add_dataclass_options(argparse.ArgumentParser(), Options)


def test_data_inspect_prints_counts_and_channel_statistics(tmp_path, capsys):
    make_dataset(tmp_path, prompts=10, per_prompt=3)
    assert main(["data", "inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "samples      30" in out and "prompts      10" in out and "channel 1" in out
    assert "30 distinct starting seeds; 0 used by more than one prompt" in out and "WARNING" not in out
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    assert "no shard" in capsys.readouterr().err


def test_train_dpo_and_eval_commands_run_end_to_end(tmp_path, capsys):
    make_dataset(tmp_path / "data", prompts=16, per_prompt=4)
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "sft"), "--steps", "4", *TINY]) == 0
    assert (tmp_path / "sft/prior.safetensors").is_file()
    out = capsys.readouterr().out
    assert "NLL nats/dim: prior" in out and "vs N(0,I) " in out  # held-out figures, no train loss
    assert "calibration: sample std at T=1" in out
    assert (
        main(
            [
                "dpo",
                str(tmp_path / "sft/prior.safetensors"),
                "--prompts",
                str(tmp_path / "data"),
                "--scorer",
                "test_train_cli:first_channel_mean",
                "--out",
                str(tmp_path / "dpo"),
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
        )
        == 0
    )
    eval_args = [
        "eval",
        "--prompts",
        str(tmp_path / "data"),
        "--backend",
        "test_train_cli:backend",
        "--scorer",
        "bright=test_train_cli:brightness",
        "--out",
        str(tmp_path / "eval"),
    ]
    assert main([*eval_args, "--seeds", "2"]) == 2  # seeds 0, 1 started training pairs of this dataset
    assert "starting seeds" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--prompts",
                str(tmp_path / "data"),
                "--split",
                "all",
                "--max-prompts",
                "3",
                "--seeds",
                "2",
                "--first-seed",
                "1000",
                "--prompt-mean-shift",
                "--validation-fraction",
                "0.2",
                "--backend",
                "test_train_cli:backend",
                "--scorer",
                "bright=test_train_cli:brightness",
                "--prior",
                f"sft={tmp_path / 'sft/prior.safetensors'}",
                "--prior",
                f"dpo={tmp_path / 'dpo/prior.safetensors'}",
                "--temperature",
                "1.0",
                "--blend",
                "0.5",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    table = (tmp_path / "eval/results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| gaussian",
        "| gaussian+prompt-mean",
        "| sft@T=1",
        "| sft@T=1 blend 0.5",
        "| dpo@T=1",
        "| dpo@T=1 blend 0.5",
    ]
    assert "matched Gaussian bright" in table and all(row.count("/2 |") == 1 for row in rows[1:])  # seeds better
    assert (tmp_path / "eval/grid.png").read_bytes()[:4] == b"\x89PNG"
