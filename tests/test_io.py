"""Checkpoint I/O: the published model.pth layout loads strictly, conversion is bit-exact, bad files are refused."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from builders import TINY, hostile_pth, random_eps, random_model, random_state_dict, random_text, write_pth, write_safetensors

import noisear
from noisear import NoiseARCheckpointError, NoiseARConfig
from noisear.io import write_atomically


def assert_same_tensors(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


# The published layout --------------------------------------------------------------------------------


def test_published_pth_loads_strictly_and_samples_like_the_same_weights(published, published_pth):
    model = noisear.load(published_pth)
    assert model.config == published.config and model.config.variant == published.variant
    assert not model.training
    assert_same_tensors(model.state_dict(), published.state)
    text, eps = random_text(published.config), random_eps(published.config)
    assert torch.equal(model.sample(text, eps), published.model.sample(text, eps))


def test_round_trip_pth_convert_safetensors_is_bit_identical(published, published_pth, tmp_path):
    target = tmp_path / "model.safetensors"
    assert noisear.convert(published_pth, target) == published.config
    state, config = noisear.read_checkpoint(target)
    assert config == published.config
    assert_same_tensors(state, published.state)
    assert_same_tensors(noisear.load(target).state_dict(), published.state)


@pytest.mark.parametrize(
    "wrapper, prefix",
    [(None, ""), ("state_dict", ""), ("model", ""), (None, "module."), ("state_dict", "module."), (None, "_orig_mod.")],
)
def test_training_script_wrappers_and_prefixes_are_tolerated(tmp_path, wrapper, prefix):
    state = random_state_dict(TINY)
    model = noisear.load(write_pth(state, tmp_path / "model.pth", wrapper=wrapper, prefix=prefix))
    assert model.config == TINY
    assert_same_tensors(model.state_dict(), state)
    assert torch.isfinite(model.sample(random_text(TINY), generator=[0])).all()


def test_legacy_non_zip_pth_loads(tmp_path):
    state = random_state_dict(TINY)
    path = tmp_path / "model.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert_same_tensors(noisear.load(path).state_dict(), state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_conversion_keeps_the_stored_dtype_bit_for_bit(tmp_path, dtype):
    state = {key: value.to(dtype) for key, value in random_state_dict(TINY).items()}
    noisear.convert(write_pth(state, tmp_path / "model.pth"), tmp_path / "model.safetensors")
    assert_same_tensors(noisear.read_checkpoint(tmp_path / "model.safetensors")[0], state)


def test_save_and_load_keep_an_own_non_square_config(tmp_path):
    config = NoiseARConfig(
        patch_size=2,
        channels=4,
        latent_height=4,
        latent_width=8,
        d_model=24,
        d_ff=32,
        n_layers=2,
        n_heads=2,
        text_dim=12,
        dropout=0.1,
    )
    model = random_model(config)
    noisear.save(model, tmp_path / "own.safetensors")
    loaded = noisear.load(tmp_path / "own.safetensors")
    assert loaded.config == config and loaded.config.variant == "own"
    assert_same_tensors(loaded.state_dict(), model.state_dict())
    text = random_text(config, 2)
    assert torch.equal(loaded.sample(text, generator=[1, 2]), model.sample(text, generator=[1, 2]))


def test_load_casts_to_the_requested_dtype_and_device(tmp_path):
    state = random_state_dict(TINY)
    model = noisear.load(write_pth(state, tmp_path / "model.pth"), device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model.state_dict().values()} == {torch.float64}
    assert torch.equal(model.prediction_head_mu[2].weight, state["prediction_head_mu.2.weight"].double())


def test_save_and_convert_write_safetensors_only(tmp_path):
    with pytest.raises(NoiseARCheckpointError, match=r"save writes \.safetensors files only; got 'model\.pth'"):
        noisear.save(random_model(TINY), tmp_path / "model.pth")
    source = write_pth(random_state_dict(TINY), tmp_path / "model.pth")
    with pytest.raises(NoiseARCheckpointError, match=r"convert writes \.safetensors files only"):
        noisear.convert(source, tmp_path / "out.pt")


# Refusals: a wrong network ---------------------------------------------------------------------------

SUFFIXES = [".pth", ".safetensors"]


def write_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    """.pth as published (config read from shapes) or .safetensors with TINY's config in the metadata."""
    return write_pth(state, path) if path.suffix == ".pth" else write_safetensors(state, path, TINY)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_missing_key_is_named_with_its_expected_shape(tmp_path, suffix):
    state = random_state_dict(TINY)
    del state["prediction_head_logvar.2.bias"]
    with pytest.raises(NoiseARCheckpointError, match=r"missing 'prediction_head_logvar\.2\.bias' \(expected shape \[12\]\)"):
        noisear.load(write_state(state, tmp_path / f"model{suffix}"))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_extra_key_is_named(tmp_path, suffix):
    state = {**random_state_dict(TINY), "self_attn_layers.1.in_proj_bias": torch.zeros(48)}
    with pytest.raises(NoiseARCheckpointError, match=r"unexpected 'self_attn_layers\.1\.in_proj_bias' \(shape \[48\]\)"):
        noisear.load(write_state(state, tmp_path / f"model{suffix}"))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_misshaped_tensor_names_key_expected_and_found_shape(tmp_path, suffix):
    state = random_state_dict(TINY)
    state["ffn_layers.0.3.weight"] = torch.zeros(16, 25)
    with pytest.raises(NoiseARCheckpointError, match=r"'ffn_layers\.0\.3\.weight' has shape \[16, 25\], expected \[16, 24\]"):
        noisear.load(write_state(state, tmp_path / f"model{suffix}"))


def test_pth_of_a_non_square_grid_needs_the_config_metadata(tmp_path):
    config = NoiseARConfig(patch_size=2, channels=3, latent_height=4, latent_width=6, d_model=16, d_ff=24, text_dim=16)
    with pytest.raises(NoiseARCheckpointError, match=r"holds 6 patches, not a square grid"):
        noisear.load(write_pth(random_state_dict(config), tmp_path / "model.pth"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_non_finite_weights_are_refused(tmp_path, suffix, bad):
    state = random_state_dict(TINY)
    state["cross_attn_layers.0.out_proj.weight"][3, 5] = bad
    with pytest.raises(NoiseARCheckpointError, match=r"'cross_attn_layers\.0\.out_proj\.weight' contains NaN or infinite values"):
        noisear.load(write_state(state, tmp_path / f"model{suffix}"))


def test_integer_tensor_is_refused(tmp_path):
    state = random_state_dict(TINY)
    state["ffn_norm.0.bias"] = torch.zeros(16, dtype=torch.int64)
    with pytest.raises(NoiseARCheckpointError, match=r"'ffn_norm\.0\.bias' has dtype torch\.int64, expected a floating"):
        noisear.load(write_pth(state, tmp_path / "model.pth"))


@pytest.mark.parametrize("entry", ["a note", 3, [1.0, 2.0]], ids=["str", "int", "list"])
def test_non_tensor_entries_are_refused(tmp_path, entry):
    path = tmp_path / "model.pth"
    torch.save({**random_state_dict(TINY), "note": entry}, path)
    with pytest.raises(NoiseARCheckpointError, match=rf"entry 'note' is a {type(entry).__name__}, not a tensor"):
        noisear.load(path)


def test_a_pickled_non_dict_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(NoiseARCheckpointError, match=r"holds a list, not a state dict"):
        noisear.load(path)


# Refusals: not a checkpoint at all -------------------------------------------------------------------


def test_pickle_carrying_code_is_refused_and_nothing_runs(tmp_path):
    path, marker = hostile_pth(tmp_path)
    with pytest.raises(
        NoiseARCheckpointError,
        match=r"refused to load model\.pth: it holds Python objects other "
        r"than plain tensors \(io\.open\); .* could run code",
    ):
        noisear.load(path)
    assert not marker.exists()
    with pytest.raises(NoiseARCheckpointError, match="refused"):
        noisear.convert(path, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    with path.open("rb") as handle:  # the file really is hostile: an unsafe unpickler runs its code
        torch.load(handle, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("keep", [0.5, 0.01], ids=["half", "header-only"])
def test_truncated_files_are_refused(tmp_path, suffix, keep):
    path = write_state(random_state_dict(TINY), tmp_path / f"model{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: max(int(len(data) * keep), 8)])
    with pytest.raises(NoiseARCheckpointError, match=r"model\S* is not a readable .*\(truncated or corrupt\?\)"):
        noisear.load(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("size", [0, 1000])
def test_random_bytes_are_refused(tmp_path, suffix, size):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(
        torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(size), dtype=torch.uint8).numpy().tobytes()
    )
    with pytest.raises(NoiseARCheckpointError, match=r"is not a readable .*\(truncated or corrupt\?\)"):
        noisear.load(path)


def test_unknown_suffix_is_refused_with_the_accepted_ones(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(NoiseARCheckpointError, match=r"unknown checkpoint type '\.gguf'; expected \.safetensors or \.pth"):
        noisear.load(path)


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(NoiseARCheckpointError, match=r"no such checkpoint file: .*absent\.safetensors"):
        noisear.load(tmp_path / "absent.safetensors")
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(NoiseARCheckpointError, match=r"no such checkpoint file"):
        noisear.load(tmp_path / "folder.pth")


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"noisear_config": "{not json"}, r"config metadata is not valid JSON"),
        ({"noisear_config": json.dumps({"patch_size": 2, "colour": "red"})}, r"unknown fields 'colour'; known: patch_size, "),
        ({"noisear_config": json.dumps([1, 2])}, r"must be a JSON object"),
        ({"noisear_config": json.dumps({"patch_size": 5})}, r"latent 128x128 is not a multiple of patch_size 5"),
    ],
    ids=["bad-json", "unknown-field", "not-object", "impossible"],
)
def test_bad_config_metadata_is_refused(tmp_path, metadata, message):
    path = write_safetensors(random_state_dict(TINY), tmp_path / "model.safetensors", metadata=metadata)
    with pytest.raises(NoiseARCheckpointError, match=rf"model\.safetensors: .*{message}"):
        noisear.load(path)


def test_metadata_config_that_disagrees_with_the_tensors_is_refused(tmp_path):
    config = NoiseARConfig(patch_size=2, channels=3, latent_height=6, latent_width=6, d_model=16, d_ff=32, text_dim=16)
    path = write_safetensors(random_state_dict(TINY), tmp_path / "model.safetensors", config)
    with pytest.raises(NoiseARCheckpointError, match=r"'ffn_layers\.0\.0\.weight' has shape \[24, 16\], expected \[32, 16\]"):
        noisear.load(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_changing_a_loaded_model_never_writes_to_its_file(tmp_path, suffix):
    """Loading maps the file's tensors without copying them; writes must stay private to the process."""
    path = write_state(random_state_dict(TINY), tmp_path / f"model{suffix}")
    before = path.read_bytes()
    model = noisear.load(path)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert path.read_bytes() == before
    assert not torch.equal(noisear.load(path).prediction_head_mu[0].weight, model.prediction_head_mu[0].weight)


# Written files ---------------------------------------------------------------------------------------


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_save_and_convert_give_files_the_permissions_of_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    noisear.save(random_model(TINY), tmp_path / "saved.safetensors")
    noisear.convert(write_pth(random_state_dict(TINY), tmp_path / "model.pth"), tmp_path / "converted.safetensors")
    for name in ("saved.safetensors", "converted.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_write_atomically_replaces_the_target_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    write_atomically(target, lambda temporary: temporary.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path, error):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def write(temporary):
        temporary.write_bytes(b"half")
        raise error

    with pytest.raises(type(error)):
        write_atomically(target, write)
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
