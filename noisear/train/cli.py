"""Commands `train`, `dpo`, `eval` and `data inspect` for ``python -m noisear``.

Multi-process training: ``torchrun --nproc_per_node N -m noisear train ...`` (same for dpo).
Pluggable Python pieces (a DPO scorer, an evaluation backend, scorers, extra noise sources) are
given as ``package.module:attribute`` and must be importable; the attribute is used as is.
Numbers are parsed as finite numbers (argparse) and checked against their field's range (the configs'
__post_init__); paths are printed with control and bidi characters escapes (noisear.cli.printable).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ..config import NoiseARError, printable

EVAL_OUTPUTS = ("results.md", "grid.png", "plot.png")
GIVEN = ("out_dir",)  # TrainConfig fields with an option of their own (--out)


def field_help(cls: type, name: str) -> str:
    """The ``help`` metadata of dataclass field ``name`` of ``cls`` (every option's help comes from there)."""
    item = next((item for item in fields(cls) if item.name == name), None)
    if item is None or not item.metadata.get("help"):
        raise ValueError(
            f"{cls.__name__}.{name} has no help: declare it as field(default=..., metadata={{'help': ...}}) "
            f"so that its command-line option is explained"
        )
    return item.metadata["help"]


def finite_float(text: str) -> float:
    """argparse type: a finite number (nan and inf are refused where they are typed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    only: str = "",
    chosen: dict[str, str] | None = None,
) -> None:
    """One --option per field of ``cls`` except ``skip`` (booleans get --x / --no-x), explained by the field's help
    metadata with its default, the values it accepts (its "range" metadata) and ``only`` (e.g. when it applies).
    With ``chosen`` (field -> how its default is chosen) every option's value is None unless given, so the command
    knows what the user set; a field not in ``chosen`` then defaults to its dataclass default."""
    for item in fields(cls):
        if item.name in skip:
            continue
        flag = "--" + item.name.replace("_", "-")
        default = None if item.default is MISSING else item.default
        accepted = f"; accepts {item.metadata['range']}" if "range" in item.metadata else ""
        shown = chosen.get(item.name, default) if chosen is not None else default
        text = f"{field_help(cls, item.name)} (default: {shown}{accepted}{only})"
        value = None if chosen is not None else default
        if isinstance(default, bool):
            parser.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, default=value, help=text)
        else:
            kind = {int: int, float: finite_float}.get(type(default), str)
            parser.add_argument(flag, dest=item.name, type=kind, default=value, help=text)


def _values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {item.name: getattr(args, item.name) for item in fields(cls) if hasattr(args, item.name)}


def _resolve(spec: str, what: str) -> Any:
    """The callable ``package.module:attribute`` names (``what``: the option, for messages)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise NoiseARError(f"{what} expects package.module:callable, got {spec!r}")
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise NoiseARError(
            f"{what} {spec!r}: no module named {err.name!r} (is it installed, or on PYTHONPATH / in the current folder?)"
        ) from None
    target = loaded
    for part in name.split("."):
        if not hasattr(target, part):
            raise NoiseARError(f"{what} {spec!r}: module {module!r} has no attribute {name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise NoiseARError(f"{what} {spec!r} is a {type(target).__name__}, not a callable")
    return target


def _named(items: list[str], what: str) -> dict[str, str]:
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise NoiseARError(f"{what} must be NAME=VALUE, got {item!r}")
        if name in result:
            raise NoiseARError(f"{what} names {name!r} twice; give each a name of its own")
        result[name] = value
    return result


def _check(value: Any, what: str, accepted: Any) -> None:
    """Refuse a command-line number outside ``accepted`` (a noisear.train.loop.Range)."""
    problem = accepted.problem(value)
    if problem:
        raise NoiseARError(f"{what} {problem}")


def say(text: str) -> None:
    """Print on the first process only: under torchrun every rank runs the command, one block is enough."""
    if os.environ.get("RANK", "0") == "0":
        print(text, flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..config import NoiseARConfig
    from ..families import FAMILIES
    from .design import CHOSEN, FROM_DATA, NO_FAMILY
    from .dpo import DPOConfig
    from .loop import TrainConfig

    train = subparsers.add_parser(
        "train",
        help="likelihood training of a prior on a shard dataset (torchrun-ready)",
        description="Teacher-forced Gaussian NLL training on a dataset directory of shards. From scratch, a prior "
        "that fits the data's model family: the latent and text sizes come from the data, the family from the "
        "dataset (or --family), and the patch, positions, decoding window, text limit and patch encoder from the "
        "family and the data unless given (printed before training; docs/training.md, 'A prior for your model "
        "family'); or from a checkpoint (--init). Writes "
        "OUT/run.json, OUT/checkpoint.safetensors, OUT/log.jsonl and OUT/prior.safetensors; the same command "
        "again resumes the run, anything else into OUT is refused (docs/training.md, 'Runs'). Validation on held-out pairs "
        "(unseen prompts and/or unseen seeds, never a noise that was trained on) reports NLL in "
        "nats/dim next to N(0,I) and a prompt-mean-only Gaussian (ridge regression from the pooled "
        "prompt embedding, fitted per-dimension variance), the std of T=1 samples against the data's "
        "and the cosine of the prior's mean with the data's prompt-mean shift. The training loss is "
        "logged as train_loss and is not a result. A dataset whose starting noises repeat across "
        "prompts is refused. Run under torchrun --nproc_per_node N for DDP.",
    )
    train.add_argument("data", help="dataset directory (shard-*.safetensors)")
    train.add_argument("--out", required=True, dest="out_dir", help=field_help(TrainConfig, "out_dir"))
    train.add_argument("--init", help="start from this checkpoint (published .pth or our .safetensors) instead of from scratch")
    train.add_argument(
        "--baseline-ridge", type=finite_float, default=0.1, help="relative ridge of the prompt-mean baseline (default: 0.1)"
    )
    train.add_argument(
        "--control-variate",
        choices=("auto", "on", "off"),
        default="auto",
        help="the means learn from noise minus its starting noise (same expected gradient, far less "
        "variance; the loss is still the NLL); auto: when the dataset's seeds say what the "
        "starting noises were (default: auto)",
    )
    train.add_argument(
        "--allow-repeated-noises",
        action="store_true",
        help="train even when starting noises repeat across prompts (refused by default: a prior "
        "memorises such noises; use with --validation-seed-fraction)",
    )
    train.add_argument(
        "--family",
        choices=[*FAMILIES, NO_FAMILY],
        help=f"{field_help(NoiseARConfig, 'family')}; {NO_FAMILY}: a prior of no family, which the nodes cannot check "
        f"against the MODEL (default: {CHOSEN['family']}; a --family that differs from the dataset's is refused)",
    )
    add_dataclass_options(train, NoiseARConfig, skip=(*FROM_DATA, "family"), only="; from scratch only", chosen=CHOSEN)
    add_dataclass_options(train, TrainConfig, skip=GIVEN)
    train.set_defaults(run=run_train)

    dpo = subparsers.add_parser(
        "dpo",
        help="DPO fine-tuning of a prior with a pluggable reward (torchrun-ready)",
        description="Rollouts of k noises per prompt from the current prior, rewards from --scorer, pairs, and "
        "the DPO loss against the frozen starting prior. Writes OUT/run.json, OUT/checkpoint.safetensors, "
        "OUT/log.jsonl (round_reward_mean per step) and OUT/prior.safetensors; the same command again resumes the "
        "run, anything else into OUT is refused, and OUT never replaces the prior it starts from.",
    )
    dpo.add_argument("init", help="the prior to fine-tune (also the frozen reference)")
    dpo.add_argument(
        "--prompts", required=True, help="dataset directory whose prompt embeddings are rolled out (one embedding per prompt)"
    )
    dpo.add_argument(
        "--scorer", required=True, help="package.module:callable (noise [B,C,H,W], PromptSet) -> reward [B], higher is better"
    )
    dpo.add_argument("--out", required=True, dest="out_dir", help=field_help(TrainConfig, "out_dir"))
    add_dataclass_options(dpo, DPOConfig)
    add_dataclass_options(dpo, TrainConfig, skip=GIVEN)
    dpo.set_defaults(run=run_dpo)

    evaluate = subparsers.add_parser(
        "eval",
        help="compare noise sources on the same prompts and seeds: table, labelled grid, plot",
        description="Renders every source's noise for every (seed, prompt) with --backend, scores the images "
        "with each --scorer, adds Gaussian controls scaled to each source's std, and writes "
        "OUT/results.md (mean ± std over seeds; each source against its std-matched Gaussian: "
        "difference, paired sign-flip test and on how many seeds it is better; the test vs Gaussian), "
        "OUT/grid.png (a labelled row per source) and OUT/plot.png (each scorer vs the std-matched "
        "Gaussian; needs matplotlib). The evaluation seeds must not be starting seeds of the dataset.",
    )
    evaluate.add_argument("--prompts", required=True, help="dataset directory giving the prompt embeddings")
    evaluate.add_argument(
        "--split",
        default="validation",
        choices=("train", "validation", "all"),
        help="which prompts of that dataset (default: validation)",
    )
    evaluate.add_argument("--validation-fraction", type=finite_float, default=0.1, help="as used for training (default: 0.1)")
    evaluate.add_argument("--max-prompts", type=int, default=16, help="use at most this many prompts (default: 16)")
    evaluate.add_argument(
        "--seeds",
        type=int,
        default=10,
        help="evaluation seeds per prompt, first-seed .. first-seed+N-1; the per-seed view needs about 10 or more (default: 10)",
    )
    evaluate.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="first evaluation seed; refused when a seed is a starting seed of the dataset (default: 0)",
    )
    evaluate.add_argument(
        "--backend", required=True, help="package.module:callable (noise [B,C,H,W], PromptSet) -> images [B,3,h,w] in [0,1]"
    )
    evaluate.add_argument(
        "--scorer",
        action="append",
        required=True,
        metavar="NAME=MODULE:CALLABLE",
        help="repeatable; callable (images, PromptSet) -> score [B], higher is better",
    )
    evaluate.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="repeatable; a NoiseAR prior evaluated at every --temperature (and blended with --blend)",
    )
    evaluate.add_argument(
        "--temperature",
        type=finite_float,
        action="append",
        metavar="T",
        help="repeatable sampling temperature for each prior (default: 0.5 and 1.0)",
    )
    evaluate.add_argument(
        "--blend",
        type=finite_float,
        action="append",
        default=[],
        metavar="STRENGTH",
        help="repeatable; variance-preserving blend of each prior (first temperature) with the "
        "Gaussian noise independent of the prior's draws, STRENGTH = NoiseAR share in [0,1]",
    )
    evaluate.add_argument(
        "--prompt-mean-shift",
        action="store_true",
        help="add the source 'gaussian+prompt-mean': the seed's Gaussian noise plus the prompt's mean "
        "shift predicted by the prompt-mean baseline fitted on the dataset's training split (the "
        "bar a learned prior must clear; single-size datasets)",
    )
    evaluate.add_argument(
        "--validation-seed-fraction",
        type=finite_float,
        default=0.0,
        help="as used for training: the prompt-mean baseline is fitted on the same training split (default: 0)",
    )
    evaluate.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=MODULE:CALLABLE",
        help="repeatable extra noise source (PromptSet, seeds) -> noise, e.g. golden re-denoise",
    )
    evaluate.add_argument("--out", required=True, help="output directory for results.md, grid.png and plot.png")
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results.md, grid.png and plot.png of an earlier evaluation in --out (refused without it)",
    )
    evaluate.set_defaults(run=run_eval)

    data = subparsers.add_parser("data", help="dataset tools", description="Tools for dataset directories.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    inspect = data_commands.add_parser(
        "inspect",
        help="counts, shapes, split sizes and per-channel noise statistics",
        description="Read every shard of a dataset directory (one at a time) and print the number of shards, "
        "samples and prompts, tensor shapes, train/validation split sizes, the number of distinct "
        "starting seeds (with a warning when noises repeat across prompts), the generation metadata "
        "and the per-channel mean and std of the target noise.",
    )
    inspect.add_argument("directory", help="dataset directory (shard-*.safetensors)")
    inspect.add_argument(
        "--validation-fraction", type=finite_float, default=0.1, help="share of prompts in the validation split (default: 0.1)"
    )
    inspect.add_argument(
        "--validation-seed-fraction",
        type=finite_float,
        default=0.0,
        help="share of seeds held out as well, as for training (default: 0)",
    )
    inspect.set_defaults(run=run_data_inspect)


def run_train(args: argparse.Namespace) -> int:
    from ..config import NoiseARConfig
    from .data import ShardDataset
    from .design import NO_FAMILY, describe_crops, describe_prior, design_prior
    from .likelihood import train_likelihood
    from .loop import TrainConfig, initial_model
    from .metrics import describe_held_out

    config = TrainConfig(**_values(args, TrainConfig))
    dataset = ShardDataset(args.data)
    given = {name: value for name, value in _values(args, NoiseARConfig).items() if value is not None and name != "family"}
    model_config = None
    if args.init is None:
        design = design_prior(dataset, args.family, **given)
        model_config = design.config
        say(design.describe())
    else:
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            raise NoiseARError(f"{options} describe a new prior; with --init the prior is the checkpoint's: leave them out")
        start = initial_model(init=args.init).config
        if args.family is not None and args.family != (start.family_key or NO_FAMILY):
            raise NoiseARError(
                f"--family {args.family}, but the --init prior serves {start.family_key or 'no family'}; leave --family out"
            )
        cropped = describe_crops(dataset.in_whole_patches(start.patch))
        say(describe_prior(start, {}, origin=f"from --init {printable(args.init)}", cropped=cropped))
    train_likelihood(
        dataset,
        config,
        model_config=model_config,
        init=args.init,
        baseline_ridge=args.baseline_ridge,
        allow_repeated_noises=args.allow_repeated_noises,
        control_variate={"auto": None, "on": True, "off": False}[args.control_variate],
    )
    log = Path(config.out_dir) / "log.jsonl"
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []
    final = [r for r in records if r.get("kind") == "validation" and r.get("step") == config.steps]
    say(describe_held_out({k: v for k, v in final[-1].items() if k not in ("kind", "step")} if final else {}))
    say(f"prior: {printable(Path(config.out_dir) / 'prior.safetensors')}")
    return 0


def run_dpo(args: argparse.Namespace) -> int:
    from .data import PromptSet, ShardDataset
    from .dpo import DPOConfig, train_dpo
    from .loop import TrainConfig, initial_model

    config = TrainConfig(**_values(args, TrainConfig))
    dpo = DPOConfig(**_values(args, DPOConfig))
    scorer = _resolve(args.scorer, "--scorer")
    dataset = ShardDataset(args.prompts)
    prompts = PromptSet.from_dataset(dataset, "train", config.validation_fraction)
    inputs = [args.init, *dataset.input_paths()]
    train_dpo(initial_model(init=args.init), prompts, scorer, config, dpo, inputs=inputs)
    say(f"prior: {printable(Path(config.out_dir) / 'prior.safetensors')}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from ..io import load
    from ..model import TEMPERATURE_MAX
    from .data import SEED_BITS, PromptSet, ShardDataset
    from .evaluate import (
        EvaluationError,
        ItemScores,
        Source,
        blend_source,
        eval_table,
        evaluate,
        gaussian_source,
        noisear_source,
        prompt_mean_source,
        save_report,
    )
    from .loop import Range
    from .metrics import PromptMeanBaseline
    from .runs import prepare_out_dir

    _check(args.max_prompts, "--max-prompts", Range(1, integer=True))
    _check(args.seeds, "--seeds", Range(1, integer=True))
    _check(args.first_seed, "--first-seed", Range(0, 2**SEED_BITS - args.seeds, integer=True))
    for name in ("validation_fraction", "validation_seed_fraction"):
        _check(getattr(args, name), f"--{name.replace('_', '-')}", Range(0.0, 1.0, open_high=True))
    for temperature in args.temperature or []:
        _check(temperature, "--temperature", Range(0.0, TEMPERATURE_MAX))
    for strength in args.blend:
        _check(strength, "--blend", Range(0.0, 1.0))
    priors = _named(args.prior, "--prior")
    extra_sources = {name: _resolve(target, "--source") for name, target in _named(args.source, "--source").items()}
    scorers = {name: _resolve(target, "--scorer") for name, target in _named(args.scorer, "--scorer").items()}
    backend = _resolve(args.backend, "--backend")
    dataset = ShardDataset(args.prompts)
    out = Path(args.out)
    prepare_out_dir(out, EVAL_OUTPUTS, [*dataset.input_paths(), *priors.values()], create=True)
    earlier = [name for name in EVAL_OUTPUTS if (out / name).exists()]
    if earlier and not args.overwrite:
        raise NoiseARError(
            f"{out} already holds {', '.join(earlier)} of an earlier evaluation; nothing was changed. Give a new "
            f"--out, or --overwrite to replace them"
        )
    prompts = PromptSet.from_dataset(dataset, None if args.split == "all" else args.split, args.validation_fraction)
    prompts = prompts.select(range(min(args.max_prompts, len(prompts))))
    if len(prompts) * args.seeds < 2:
        raise NoiseARError(
            f"{len(prompts)} prompt(s) x {args.seeds} seed(s) make one pair; the paired tests need two or more "
            f"(raise --seeds or --max-prompts)"
        )
    shape = dataset.item_shapes["noise"]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    trained = sorted(set(seeds) & {int(s) for shard in dataset.shards for s in shard.seed})
    if trained:
        raise NoiseARError(
            f"evaluation seeds {trained[:5]} are starting seeds of {dataset.directory}, so the noises "
            f"would not be unseen; choose another --first-seed"
        )
    sources = {"gaussian": gaussian_source(shape)}
    if args.prompt_mean_shift:
        sources["gaussian+prompt-mean"] = prompt_mean_source(
            PromptMeanBaseline(dataset, args.validation_fraction, seed_fraction=args.validation_seed_fraction), shape
        )
    temperatures = args.temperature or [0.5, 1.0]
    for name, path in priors.items():
        model = load(path)
        for temperature in temperatures:
            sources[f"{name}@T={temperature:g}"] = noisear_source(model, temperature)
        for strength in args.blend:
            sources[f"{name}@T={temperatures[0]:g} blend {strength:g}"] = blend_source(
                noisear_source(model, temperatures[0]), shape, strength
            )
    clashes = sorted(set(sources) & set(extra_sources))
    if clashes:
        raise NoiseARError(f"--source names {clashes} are taken by built-in sources; choose other names")
    sources.update(extra_sources)

    def render(noise: torch.Tensor, prompt_set: PromptSet) -> torch.Tensor:
        images = backend(noise, prompt_set)
        if isinstance(images, torch.Tensor) and (images.ndim != 4 or images.shape[1] not in (1, 3)):
            raise EvaluationError(
                f"--backend {args.backend} returned shape {list(images.shape)}; expected images [N, 1 or 3, H, W] in [0, 1]"
            )
        return images

    result = evaluate(
        [Source.item_seeded(name, source) for name, source in sources.items()], render, ItemScores(scorers), prompts, seeds
    )
    paths = save_report(result, out)
    if "plot" not in paths and (out / "plot.png").exists():  # --overwrite: no plot from an earlier evaluation stays
        (out / "plot.png").unlink()
    print(eval_table(result))
    print("wrote " + ", ".join(printable(path) for path in paths.values()))
    return 0


def run_data_inspect(args: argparse.Namespace) -> int:
    from .data import inspect_dataset

    report = inspect_dataset(args.directory, args.validation_fraction, args.validation_seed_fraction)
    print(f"directory    {printable(report['directory'])}")
    print(f"shards       {report['shards']}")
    print(
        f"samples      {report['samples']}  (train {report['split_samples']['train']}, "
        f"validation {report['split_samples']['validation']})"
    )
    print(
        f"prompts      {report['prompts']}  (train {report['split_prompts']['train']}, "
        f"validation {report['split_prompts']['validation']})"
    )
    print(f"text         {list(report['text_shape'])} per sample; the longest text {report['text_tokens']} tokens")
    print(f"noise        {', '.join(str(list(shape)) for shape in report['noise_shapes'])} per sample")
    seeds = report["seeds"]
    print(f"seeds        {seeds['distinct_seeds']} distinct starting seeds; {seeds['shared_seeds']} used by more than one prompt")
    print(f"info         {json.dumps(vars(report['info']), sort_keys=True)}")
    for channel, (mean, std) in enumerate(zip(report["channel_mean"], report["channel_std"])):
        print(f"channel {channel:<4} mean {mean:+.5f}  std {std:.5f}")
    if not report["channel_mean"]:
        print("channels     no statistics: the dataset holds no samples")
    for warning in report["warnings"]:
        print(f"WARNING: {printable(warning)}")
    return 0
