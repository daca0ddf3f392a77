"""Hostile checkpoints: every file below is refused with one specific line before anything big is allocated.

The corpus is built here, class by class (config metadata, shapes, .pth geometry, pickles, zip
structure, values), plus a byte-mutation fuzz of both readers and the file changing after a load.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from builders import TINY, random_state_dict, random_text, write_crafted_pth, write_pth, write_safetensors

import noisear
from noisear import NoiseARCheckpointError, NoiseARConfig
from noisear.config import LIMITS, NoiseARConfigError

MESSAGE_CHARS = 1500  # one line, bounded whatever the file holds


def refusal(path: Path, match: str) -> str:
    """Load ``path``, expect NoiseARCheckpointError matching ``match``; the message is one bounded line."""
    with pytest.raises(NoiseARCheckpointError, match=match) as caught:
        noisear.load(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < MESSAGE_CHARS, message
    assert "weights_only=False" not in message
    return message


def with_config(tmp_path: Path, text: str, state: dict | None = None) -> Path:
    """TINY's weights in a .safetensors whose config metadata is ``text``."""
    return write_safetensors(state or random_state_dict(TINY), tmp_path / "model.safetensors", metadata={"noisear_config": text})


def tiny_config_with(**changes) -> str:
    values = json.loads(TINY.to_json())
    values.update(changes)
    return json.dumps(values)


# Config metadata ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_layers": 10**4}, r"n_layers must be between 1 and 64, got 10000"),
        ({"n_layers": 10**5}, r"n_layers must be between 1 and 64, got 100000"),
        ({"d_model": 2**24}, r"d_model must be between 1 and 65536, got 16777216"),
        ({"latent_height": 2**40}, r"latent_height must be between 1 and 16384"),
        ({"n_layers": 0}, r"n_layers must be between 1 and 64, got 0"),
        ({"d_model": -16}, r"d_model must be between 1 and 65536, got -16"),
        ({"d_model": "16"}, r"d_model must be an integer, got str '16'"),
        ({"d_model": None}, r"d_model must be an integer, got NoneType None"),
        ({"d_model": [16]}, r"d_model must be an integer, got list \[16\]"),
        ({"d_model": {"a": 1}}, r"d_model must be an integer, got dict"),
        ({"d_model": 16.0}, r"d_model must be an integer, got float 16.0"),
        ({"d_model": True}, r"d_model must be an integer, got bool True"),
        ({"dropout": "0.1"}, r"dropout must be a number, got str"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
        ({"positions": ["2d"]}, r"positions must be one of"),
        ({"d_model": 65536, "d_ff": 262144, "n_layers": 64}, r"this config describes [\d,]+ values, more than any NoiseAR prior"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_config_fields_are_type_and_range_checked(tmp_path, changes, message):
    refusal(with_config(tmp_path, tiny_config_with(**changes)), rf"model\.safetensors: {message}")


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"n_layers": 1e400}', r"config metadata holds '1e400', not a finite number"),
        ('{"n_layers": Infinity}', r"config metadata holds Infinity, not a finite number"),
        ('{"dropout": NaN}', r"config metadata holds NaN, not a finite number"),
        ('{"dropout": -Infinity}', r"config metadata holds -Infinity, not a finite number"),
        ('{"n_layers": 1' + "0" * 5000 + "}", r"config metadata is not valid JSON: 'Exceeds the limit"),
        ("[" * 20000 + "]" * 20000, r"config metadata is nested too deeply"),
        ('{"d_model": ' + "[" * 20000 + "]" * 20000 + "}", r"config metadata is nested too deeply"),
        (" " * (LIMITS.config_bytes + 1), r"config metadata must be a JSON text of at most 65536 characters"),
        (
            "{" + ", ".join(f'"f{i}": 1' for i in range(5000)) + "}",
            r"config metadata has unknown fields 'f0', 'f1', 'f10', 'f100', 'f1000' \.\.\. and 4995 more",
        ),
        ('"just a string"', r"config metadata must be a JSON object, got a str"),
    ],
    ids=[
        "1e400",
        "Infinity",
        "NaN",
        "-Infinity",
        "5000-digit-int",
        "deep-list",
        "deep-value",
        "oversized",
        "5000-unknown-fields",
        "string",
    ],
)
def test_hostile_config_json_is_refused_in_one_line(tmp_path, text, message):
    refusal(with_config(tmp_path, text), rf"model\.safetensors: {message}")


def test_config_from_code_is_checked_too():
    with pytest.raises(NoiseARConfigError, match=r"n_layers must be an integer, got float 2.0"):
        NoiseARConfig(n_layers=2.0)
    with pytest.raises(NoiseARConfigError, match=r"dropout must be in \[0, 1\), got nan"):
        NoiseARConfig(dropout=float("nan"))
    assert NoiseARConfig(n_layers=LIMITS.fields["n_layers"], d_model=64, d_ff=64, text_dim=64).n_layers == 64


# Shapes ---------------------------------------------------------------------------------------------


def test_config_claiming_more_layers_than_the_file_holds_is_refused_by_shapes(tmp_path):
    message = refusal(
        with_config(tmp_path, tiny_config_with(n_layers=64)),
        r"does not match a NoiseAR own network: missing 'self_attn_layers\.1\.in_proj_weight'",
    )
    assert message.endswith("more")  # 63 layers of 18 tensors missing: listed by count, not one by one


def test_many_extra_keys_give_a_bounded_message(tmp_path):
    state = {**random_state_dict(TINY), **{f"extra.{i}": torch.zeros(1) for i in range(2000)}}
    refusal(
        write_safetensors(state, tmp_path / "model.safetensors", TINY),
        r"unexpected 'extra\.0' \(shape \[1\]\), .* \.\.\. and 1995 more$",
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_more_tensors_than_any_prior_are_refused_before_reading(tmp_path, suffix):
    state = {**random_state_dict(TINY), **{f"extra.{i}": torch.zeros(1) for i in range(LIMITS.tensors)}}
    path = tmp_path / f"model{suffix}"
    write_safetensors(state, path, TINY) if suffix == ".safetensors" else write_pth(state, path)
    refusal(path, rf"holds 41\d\d (tensors|records); a NoiseAR checkpoint holds at most {LIMITS.tensors}")


def test_hundred_thousand_views_of_one_storage_are_refused_by_the_pickle_size(tmp_path):
    base = torch.zeros(100_000)
    path = write_pth({f"k{i}": base[i : i + 1] for i in range(100_000)}, tmp_path / "model.pth")
    refusal(path, r"expected one data\.pkl of at most 1048576 bytes")


@pytest.mark.parametrize(
    "key, shape, message",
    [
        ("learnable_start_token_emb", (), r"'learnable_start_token_emb' has shape \[\]; expected 1 dimensions"),
        ("latent_patch_encoder.0.weight", (0, 12), r"latent_patch_encoder\.0\.weight has shape \[0, 12\]"),
        ("pos_encoding", (1, 0, 16), r"pos_encoding holds -1 patches, not a square grid"),
    ],
)
def test_pth_shapes_that_cannot_be_read_as_a_config_are_refused(tmp_path, key, shape, message):
    state = random_state_dict(TINY)
    state[key] = torch.zeros(shape)
    refusal(write_pth(state, tmp_path / "model.pth"), message)


# .pth geometry: what a tensor declares about its storage --------------------------------------------


def test_stride_zero_views_are_refused_before_anything_is_allocated(tmp_path):
    state = random_state_dict(TINY)
    state["ffn_layers.0.0.weight"] = torch.zeros(1).expand(24, 16)  # torch.save keeps the view: 4 bytes
    refusal(
        write_pth(state, tmp_path / "model.pth"),
        r"'ffn_layers\.0\.0\.weight' of shape \[24, 16\] \(strides \[0, 0\]\) is a view of 4 stored bytes",
    )


def test_a_crafted_stride_zero_giant_is_refused(tmp_path):
    path = write_crafted_pth(tmp_path / "model.pth", {"learnable_start_token_emb": ((2**31,), (0,), 4)})
    refusal(path, r"of shape \[2147483648\] \(strides \[0\]\) is a view of 16 stored bytes")


def test_a_storage_claiming_more_than_its_record_is_refused(tmp_path):
    path = write_crafted_pth(tmp_path / "model.pth", {"learnable_start_token_emb": ((4,), (1,), 10**10)})
    refusal(path, r"is a view of \d+ stored bytes, not a tensor that owns its 16 bytes")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda w: torch.zeros(100)[:16], r"is a view of 400 stored bytes, not a tensor that owns its 64 bytes"),
        (lambda w: torch.zeros(16, 2)[:, 0], r"strides \[2\]"),
    ],
    ids=["slice-of-larger", "non-contiguous"],
)
def test_views_into_larger_storages_are_refused(tmp_path, make, message):
    state = random_state_dict(TINY)
    state["ffn_norm.0.bias"] = make(state["ffn_norm.0.bias"])
    refusal(write_pth(state, tmp_path / "model.pth"), message)


def test_tensors_sharing_their_data_are_refused(tmp_path):
    state = random_state_dict(TINY)
    state["ffn_norm.0.bias"] = state["ffn_norm.0.weight"]
    refusal(write_pth(state, tmp_path / "model.pth"), r"'ffn_norm\.0\.bias' shares its data with 'ffn_norm\.0\.weight'")


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.zeros(16).to_sparse(), r"other than plain tensors \(torch\._utils\._rebuild_sparse_tensor, "),
        (torch.zeros(16, dtype=torch.complex64), r"other than plain tensors \(torch\.ComplexFloatStorage\)"),
        (torch.zeros(16, device="meta"), r"other than plain tensors \(torch\._utils\._rebuild_meta_tensor_no_storage, "),
        (torch.zeros(16, dtype=torch.int64), r"'ffn_norm\.0\.bias' has dtype torch\.int64, expected a floating type"),
    ],
    ids=["sparse", "complex", "meta", "int64"],
)
def test_tensors_other_than_plain_dense_floats_are_refused(tmp_path, value, message):
    state = random_state_dict(TINY)
    state["ffn_norm.0.bias"] = value
    refusal(write_pth(state, tmp_path / "model.pth"), message)


def test_non_string_keys_and_prefix_collisions_are_refused(tmp_path):
    torch.save({**random_state_dict(TINY), 3: torch.zeros(1)}, tmp_path / "model.pth")
    refusal(tmp_path / "model.pth", r"entry 3 is named by a int, not a string")
    state = random_state_dict(TINY)
    torch.save({**state, "module.ffn_norm.0.bias": state["ffn_norm.0.bias"].clone()}, tmp_path / "model.pth")
    refusal(tmp_path / "model.pth", r"two entries are named 'ffn_norm\.0\.bias'")


# Pickles that carry code ------------------------------------------------------------------------------


class Payload:
    """Unpickling calls ``function(*args)``."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize(
    "function, shown",
    [
        (os.system, "posix.system"),
        (subprocess.Popen, "subprocess.Popen"),
        (subprocess.check_output, "subprocess.check_output"),
        (eval, "builtins.eval"),
        (exec, "builtins.exec"),
        (__import__, "builtins.__import__"),
        (os.popen, "os.popen"),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
@pytest.mark.parametrize("protocol", [2, 4])
def test_code_carrying_pickles_name_the_global_and_nothing_runs(tmp_path, function, shown, protocol):
    marker = tmp_path / "code-ran"
    args = {
        os.system: (f"touch {marker}",),
        subprocess.Popen: (["touch", str(marker)],),
        subprocess.check_output: (["touch", str(marker)],),
        eval: (f"open({str(marker)!r}, 'w')",),
        exec: (f"open({str(marker)!r}, 'w')",),
        __import__: ("os",),
        os.popen: (f"touch {marker}",),
    }[function]
    path = tmp_path / "model.pth"
    torch.save({**random_state_dict(TINY), "payload": Payload(function, *args)}, path, pickle_protocol=protocol)
    message = refusal(
        path,
        rf"refused to load model\.pth: it holds Python objects other than plain tensors "
        rf"\({re.escape(shown)}\); .* could run code when unpickled\. Nothing was executed",
    )
    assert message.endswith("Get the file from its original source, or a .safetensors version of it.")
    assert not marker.exists()


def test_a_legacy_format_pickle_carrying_code_is_refused(tmp_path):
    path, marker = tmp_path / "model.pth", tmp_path / "code-ran"
    torch.save(
        {**random_state_dict(TINY), "payload": Payload(os.system, f"touch {marker}")}, path, _use_new_zipfile_serialization=False
    )
    refusal(path, r"\(posix\.system\)")
    assert not marker.exists()


def test_a_pickle_too_long_for_the_opcode_budget_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({**random_state_dict(TINY), "junk": list(range(300_000))}, path)
    refusal(path, r"expected one data\.pkl of at most 1048576 bytes|more than \d+ tensors or \d+ pickle operations")


# Zip structure ------------------------------------------------------------------------------------------


def test_compressed_records_are_refused(tmp_path):
    plain = write_pth(random_state_dict(TINY), tmp_path / "plain.pth")
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(tmp_path / "model.pth", "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    refusal(tmp_path / "model.pth", r"holds compressed records, which torch\.save never writes")


def test_a_zip_needing_an_unknown_zip_version_is_refused(tmp_path):
    """zipfile raises NotImplementedError for it (found by the adversarial batch)."""
    path = write_pth(random_state_dict(TINY), tmp_path / "model.pth")
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # first central directory entry: version needed at +6
    data[entry + 6 : entry + 8] = (247).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    refusal(path, r"is not a readable PyTorch checkpoint \(truncated or corrupt\?\): zip file version 24\.7")


def test_a_legacy_storage_claiming_gigabytes_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(random_state_dict(TINY), path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    numel = (24 * 16).to_bytes(2, "little")  # ffn_layers.0.0.weight's storage size, as BININT2 in the pickle
    at = data.index(b"M" + numel)  # first storage of that size
    data[at : at + 3] = b"J" + (10**9).to_bytes(4, "little")  # BININT: a billion floats
    path.write_bytes(bytes(data))
    refusal(path, r"is not a readable PyTorch checkpoint|is a view of")


# Values -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [3e38, -2e4, 1e5])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_absurd_weight_magnitudes_are_refused(tmp_path, suffix, value):
    state = random_state_dict(TINY)
    state["prediction_head_mu.2.weight"][1, 2] = value
    path = tmp_path / f"model{suffix}"
    write_safetensors(state, path, TINY) if suffix == ".safetensors" else write_pth(state, path)
    refusal(
        path,
        re.escape(
            f"'prediction_head_mu.2.weight' holds values up to {abs(value):.3g}; a NoiseAR prior's "
            f"weights stay below 10000, so the file is damaged"
        ),
    )


def test_large_but_plausible_weights_load(tmp_path):
    state = random_state_dict(TINY)
    state["ffn_norm.0.weight"][0] = 9000.0
    assert noisear.load(write_pth(state, tmp_path / "model.pth")).ffn_norm[0].weight[0] == 9000.0


# Byte-mutation fuzz of both readers ---------------------------------------------------------------------


def mutations(data: bytes, count: int, seed: int):
    """``count`` damaged copies of ``data``: random bytes overwritten, cut, or a run zeroed."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        damaged = bytearray(data)
        kind = int(torch.randint(3, (1,), generator=generator))
        at = int(torch.randint(len(data), (1,), generator=generator))
        if kind == 0:
            for _ in range(int(torch.randint(1, 8, (1,), generator=generator))):
                where = int(torch.randint(len(data), (1,), generator=generator))
                damaged[where] = int(torch.randint(256, (1,), generator=generator))
        elif kind == 1:
            del damaged[at:]
        else:
            damaged[at : at + 64] = bytes(len(damaged[at : at + 64]))
        yield bytes(damaged)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".legacy.pth"])
def test_damaged_files_load_cleanly_or_are_refused(tmp_path, suffix):
    """Every damaged copy either loads into a prior with finite noise or raises NoiseARCheckpointError."""
    state, path = random_state_dict(TINY), tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        write_safetensors(state, path, TINY)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=suffix == ".pth")
    original, outcomes = path.read_bytes(), {"loaded": 0, "refused": 0}
    for damaged in mutations(original, 150, seed=len(suffix)):
        path.write_bytes(damaged)
        try:
            model = noisear.load(path)
        except NoiseARCheckpointError as err:
            assert "\n" not in str(err) and len(str(err)) < MESSAGE_CHARS
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        assert torch.isfinite(model.sample(random_text(TINY), generator=[0])).all()
    assert outcomes["refused"] > 0, outcomes


# The file after a load ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".legacy.pth"])
def test_a_loaded_prior_does_not_depend_on_its_file(tmp_path, suffix):
    """Truncating the file (cp, a re-download) or overwriting it in place changes nothing (no SIGBUS, same noise)."""
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        write_safetensors(random_state_dict(TINY), path, TINY)
    else:
        torch.save(random_state_dict(TINY), path, _use_new_zipfile_serialization=suffix == ".pth")
    model = noisear.load(path)
    text = random_text(TINY)
    before = model.sample(text, generator=[0])
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(0)
    assert torch.equal(model.sample(text, generator=[0]), before)
    with path.open("r+b") as handle:
        handle.write(os.urandom(size))
    assert torch.equal(model.sample(text, generator=[0]), before)


def test_refused_files_are_not_pickled_by_python(tmp_path):
    """The scan never unpickles: a file whose pickle would fail loudly in Python is refused by name."""
    path = tmp_path / "model.pth"
    torch.save({**random_state_dict(TINY), "payload": Payload(pickle.loads, b"garbage")}, path)
    refusal(path, r"\(_?pickle\.loads, ")
