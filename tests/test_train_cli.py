"""The train, dpo, eval and data commands, run through python -m noisear's parser."""

import argparse
from dataclasses import dataclass, field, fields

import pytest
import torch
from test_train_likelihood import make_dataset, one_thread  # noqa: F401  (fixture)

from noisear import save
from noisear.cli import build_parser, main
from noisear.config import NoiseARConfig
from noisear.train.cli import add_dataclass_options
from noisear.train.data import DatasetInfo, ShardWriter
from noisear.train.design import CHOSEN, FROM_DATA
from noisear.train.dpo import DPOConfig
from noisear.train.loop import TrainConfig, initial_model

TINY = [
    "--family",
    "none",  # the toy data records no family and fits none
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


DPO_MODEL = NoiseARConfig(patch_size=2, channels=2, latent_height=4, latent_width=4, d_model=16, d_ff=32, text_dim=4)


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
                if cls is NoiseARConfig:  # None unless given: the prior is designed for the data (noisear.train.design)
                    assert options[item.name].default is None, item.name
                    assert f"(default: {CHOSEN.get(item.name, item.default)}" in options[item.name].help, item.name
                elif item.name != "out_dir":  # --out is required
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


# Every user error of the training commands: one line on stderr, exit status 2, nothing written -----------------
def train_argv(tmp_path, *extra, out="run"):
    return ["train", str(tmp_path / "data"), "--out", str(tmp_path / out), "--steps", "2", *TINY, *extra]


def eval_argv(tmp_path, *extra, scorer="bright=test_train_cli:brightness", out="eval"):
    return [
        "eval",
        "--prompts",
        str(tmp_path / "data"),
        "--split",
        "all",
        "--max-prompts",
        "2",
        "--seeds",
        "2",
        "--first-seed",
        "1000",
        "--backend",
        "test_train_cli:backend",
        "--scorer",
        scorer,
        "--out",
        str(tmp_path / out),
        *extra,
    ]


def dpo_argv(tmp_path, scorer):
    return [
        "dpo",
        str(tmp_path / "prior.safetensors"),
        "--prompts",
        str(tmp_path / "data"),
        "--scorer",
        scorer,
        "--out",
        str(tmp_path / "dpo"),
        "--steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]


def existing_file(tmp_path):
    (tmp_path / "file").write_text("keep me")
    return train_argv(tmp_path, out="file")


def under_a_file(tmp_path):
    (tmp_path / "file").write_text("keep me")
    return train_argv(tmp_path, out="file/run")


def prior_is_a_folder(tmp_path):
    (tmp_path / "run" / "prior.safetensors").mkdir(parents=True)
    return train_argv(tmp_path)


def eval_out_is_a_file(tmp_path):
    (tmp_path / "file").write_text("keep me")
    return eval_argv(tmp_path, out="file")


USER_ERRORS = {
    "--log-every 0": (lambda t: train_argv(t, "--log-every", "0"), "log_every (--log-every) must be an integer in [1, inf)"),
    "--checkpoint-every -1": (lambda t: train_argv(t, "--checkpoint-every", "-1"), "checkpoint_every"),
    "--val-every -1": (lambda t: train_argv(t, "--val-every", "-1"), "val_every"),
    "--device foo": (lambda t: train_argv(t, "--device", "foo"), "device must be cpu, cuda, cuda:N or mps"),
    "--device cuda:99": (lambda t: train_argv(t, "--device", "cuda:99"), "device cuda:99 is not available here"),
    "--seed -1": (lambda t: train_argv(t, "--seed", "-1"), "seed (--seed) must be an integer in [0, 4.29497e+09)"),
    "--seed 2**70": (lambda t: train_argv(t, "--seed", str(2**70)), "seed (--seed)"),
    "--out an existing file": (existing_file, "is an existing file"),
    "--out under a file": (under_a_file, "cannot create the output folder"),
    "OUT/prior.safetensors a folder": (prior_is_a_folder, "is not a file (a folder?)"),
    "eval --out an existing file": (eval_out_is_a_file, "is an existing file"),
    "eval --first-seed -5": (lambda t: eval_argv(t, "--first-seed", "-5"), "--first-seed must be an integer in [0,"),
    "eval --blend 2": (lambda t: eval_argv(t, "--blend", "2"), "--blend must be a number in [0, 1]"),
    "eval --max-prompts 0": (lambda t: eval_argv(t, "--max-prompts", "0"), "--max-prompts"),
    "eval one pair": (lambda t: eval_argv(t, "--seeds", "1", "--max-prompts", "1"), "the paired tests need two"),
    "eval an empty split": (
        lambda t: [*eval_argv(t), "--split", "validation", "--validation-fraction", "0"],
        "split of",
    ),
    "eval --scorer without a colon": (lambda t: eval_argv(t, scorer="b=os"), "expects package.module:callable"),
    "eval --scorer of a missing module": (
        lambda t: eval_argv(t, scorer="b=no_such_module:f"),
        "no module named 'no_such_module'",
    ),
    "eval --scorer of a missing attribute": (lambda t: eval_argv(t, scorer="b=os:no_such_function"), "has no attribute"),
    "eval --scorer not callable": (lambda t: eval_argv(t, scorer="b=os:sep"), "not a callable"),
    "eval --scorer without a name": (lambda t: eval_argv(t, scorer="test_train_cli:brightness"), "must be NAME=VALUE"),
    "eval a scorer returning NaN": (
        lambda t: eval_argv(t, scorer="b=test_train_cli:nan_score"),
        "scorer 'b' (test_train_cli:nan_score) returned NaN",
    ),
    "eval a backend of the wrong shape": (
        lambda t: [*eval_argv(t), "--backend", "test_train_cli:brightness"],
        "--backend test_train_cli:brightness returned shape",
    ),
    "dpo --scorer of a missing module": (lambda t: dpo_argv(t, "no_such_module:f"), "no module named 'no_such_module'"),
    "dpo --scorer not callable": (lambda t: dpo_argv(t, "os:sep"), "not a callable"),
    "--out with an escape sequence": (lambda t: train_argv(t, out="evil\x1b[2J"), "control or bidi-override characters"),
    "--out with a bidi override": (lambda t: train_argv(t, out="run\u202egnp"), "control or bidi-override characters"),
}


def nan_score(images, prompts):
    return torch.full((len(images),), float("nan"))


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_a_user_error_of_a_training_command_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    make_dataset(tmp_path / "data", prompts=16, per_prompt=4)
    save(initial_model(DPO_MODEL), tmp_path / "prior.safetensors")  # what the dpo cases start from
    make, message = USER_ERRORS[case]
    argv = make(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert message in captured.err, captured.err
    assert "\x1b" not in captured.err and "\u202e" not in captured.err
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith("eval")] == []
    if (tmp_path / "file").exists():
        assert (tmp_path / "file").read_text() == "keep me"


def test_eval_into_an_earlier_evaluation_is_refused_unless_overwrite(tmp_path, capsys):
    make_dataset(tmp_path / "data", prompts=16, per_prompt=4)
    assert main(eval_argv(tmp_path)) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()}
    assert main(eval_argv(tmp_path, "--seeds", "3")) == 2
    assert "already holds" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()} == before
    assert main(eval_argv(tmp_path, "--seeds", "3", "--overwrite")) == 0
    assert (tmp_path / "eval/results.md").read_bytes() != before["results.md"]


def test_eval_never_writes_into_the_prompts_folder(tmp_path, capsys):
    make_dataset(tmp_path / "data", prompts=16, per_prompt=4)
    assert main(eval_argv(tmp_path, out="data")) == 2
    assert "is the input" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["shard-00000.safetensors"]


def test_data_inspect_escapes_a_folder_name_and_says_when_a_dataset_is_empty(tmp_path, capsys):
    from safetensors.torch import save_file

    from noisear.train.data import FORMAT_NAME, FORMAT_VERSION, DatasetInfo

    folder = tmp_path / "evil\x1b[2J"
    folder.mkdir()
    empty = {
        "text": torch.zeros(0, 2, 4),
        "text_mask": torch.zeros(0, 2, dtype=torch.uint8),
        "noise": torch.zeros(0, 2, 4, 4),
        "prompt_index": torch.zeros(0, dtype=torch.int64),
        "seed": torch.zeros(0, dtype=torch.int64),
    }
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "info": DatasetInfo().to_json(), "prompts": "{}"}
    save_file(empty, str(folder / "shard-00000.safetensors"), metadata=metadata)
    assert main(["data", "inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil\\x1b[2J" in out
    assert "nan" not in out.lower() and "samples      0" in out and "the dataset is empty" in out


def test_train_prints_what_it_chose_before_training_and_refuses_new_prior_options_with_init(tmp_path, capsys):
    make_dataset(tmp_path / "data", prompts=16, per_prompt=4)
    assert main(train_argv(tmp_path)) == 0
    out = capsys.readouterr().out
    block = out[: out.index("held-out pairs")]
    assert block.startswith("prior (sizes in latent cells, H x W):\n  family      none")
    assert "2 x 2 cells = 8 values per token (given)" in block and "2 patches a side (covers the largest bucket, 4 x 4" in block
    init = ["--init", str(tmp_path / "run/prior.safetensors")]
    tuned = ["train", str(tmp_path / "data"), "--out", str(tmp_path / "tuned"), "--steps", "1", "--batch-size", "8"]
    assert main([*tuned, *init, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prior (from --init ") and "\n  family      none (the nodes cannot check it against a MODEL)\n" in out
    assert main([*train_argv(tmp_path, out="other"), *init]) == 2
    assert "--family, --patch-size" not in capsys.readouterr().err  # --family is checked against the prior instead
    argv = ["train", str(tmp_path / "data"), "--out", str(tmp_path / "other"), *init, "--family", "flux"]
    assert main(argv) == 2
    assert "--family flux, but the --init prior serves no family" in capsys.readouterr().err


def test_under_torchrun_only_the_first_rank_prints_the_design_and_the_summary(tmp_path, capsys, monkeypatch):
    make_dataset(tmp_path / "data", prompts=16, per_prompt=4)
    monkeypatch.setenv("RANK", "1")  # what torchrun sets for the second process (WORLD_SIZE stays 1: no group)
    assert main(train_argv(tmp_path, out="second")) == 0
    out = capsys.readouterr().out  # the loop's own lines go by the process group's rank, here 0 of 1
    assert "prior (sizes" not in out and "held-out pairs" not in out and "prior: " not in out
    monkeypatch.setenv("RANK", "0")
    assert main(train_argv(tmp_path, out="first")) == 0
    out = capsys.readouterr().out
    assert out.startswith("prior (sizes in latent cells") and "held-out pairs" in out and "prior: " in out


def test_a_run_of_one_family_is_not_resumed_as_another(tmp_path, capsys):
    """16-channel latents with 4096-wide text fit SD3, Flux and Chroma: a dataset that records no family needs
    --family, and the family is part of the run."""
    with ShardWriter(tmp_path / "data", DatasetInfo(source_model="unrecorded"), shard_size=100) as writer:
        for p in range(8):
            text, mask = torch.randn(4, 3, 4096), torch.tensor([[True, True, False]] * 4)
            writer.append(text, torch.randn(4, 16, 8, 8), [p] * 4, range(4 * p, 4 * p + 4), mask)
    network = [
        "--patch-size",
        "4",
        "--d-model",
        "16",
        "--d-ff",
        "32",
        "--device",
        "cpu",
        "--no-progress",
        "--validation-fraction",
        "0",
    ]
    argv = ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "4", *network]
    assert main(argv) == 2
    assert "fit sd3, flux, chroma. Give --family KEY" in capsys.readouterr().err
    assert main([*argv, "--family", "flux"]) == 0
    assert "  family      flux: Flux.1 dev / schnell (given)\n" in capsys.readouterr().out
    assert main([*argv, "--family", "chroma"]) == 2
    assert 'it differs in family "flux" there, "chroma" now' in capsys.readouterr().err
