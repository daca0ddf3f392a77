"""Dataset shards under stress: hostile metadata and headers, byte-bounded buffering, killed writers,
numeric shard order past shard 99999, files that are not shards (FIFOs, folders, broken links), shards reached
twice through links, shards that change while a run reads them, empty datasets."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from noisear.train.data import (
    FORMAT_NAME,
    FORMAT_VERSION,
    DatasetError,
    DatasetInfo,
    ShardDataset,
    ShardWriter,
    inspect_dataset,
    shard_paths,
)

INFO = DatasetInfo(source_model="test", prediction="epsilon", steps=10)


def tensors(count=2, tokens=3, width=5, shape=(2, 4, 4)):
    return {
        "text": torch.zeros(count, tokens, width),
        "text_mask": torch.ones(count, tokens, dtype=torch.uint8),
        "noise": torch.zeros(count, *shape),
        "prompt_index": torch.arange(count),
        "seed": torch.zeros(count, dtype=torch.int64),
    }


def metadata(**changes):
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "info": INFO.to_json(), "prompts": "{}", **changes}


def shard(directory, number=0, tensor_changes=None, **metadata_changes):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"shard-{number:05d}.safetensors"
    save_file({**tensors(), **(tensor_changes or {})}, str(path), metadata=metadata(**metadata_changes))
    return path


HOSTILE_INFO = {
    "not JSON": "{steps: 3",
    "a list": "[1, 2]",
    "a string": '"info"',
    "null": "null",
    "unknown field": json.dumps({"source_model": "x", "__class__": "os.system"}),
    "steps a string": json.dumps({"steps": "10"}),
    "steps a float": json.dumps({"steps": 2.0}),
    "steps a bool": json.dumps({"steps": True}),
    "steps null": json.dumps({"steps": None}),
    "guidance infinite": '{"guidance_denoise": Infinity}',
    "guidance NaN": '{"guidance_denoise": NaN}',
    "guidance 1e400": '{"guidance_invert": 1e400}',
    "guidance a list": json.dumps({"guidance_invert": [1.0]}),
    "extra a string": json.dumps({"extra": "x"}),
    "source_model a number": json.dumps({"source_model": 3}),
    "huge integer": '{"steps": ' + "9" * 5000 + "}",
    "deeply nested": '{"extra": ' + "[" * 100000 + "]" * 100000 + "}",
}


@pytest.mark.parametrize("case", HOSTILE_INFO)
def test_hostile_info_metadata_is_a_clear_dataset_error(tmp_path, case):
    shard(tmp_path, info=HOSTILE_INFO[case])
    with pytest.raises(DatasetError, match="shard-00000.safetensors.*(info|JSON)") as caught:
        ShardDataset(tmp_path)
    assert len(str(caught.value)) < 400
    with pytest.raises(DatasetError):  # the collector's writer opens the same way
        ShardWriter(tmp_path, INFO)


HOSTILE_PROMPTS = {
    "not JSON": "{",
    "a list": '["a"]',
    "a non-numeric key": '{"a": "b"}',
    "a numeric value": '{"1": 2}',
    "a huge key": '{"' + "1" * 400 + '": "x"}',
}


@pytest.mark.parametrize("case", HOSTILE_PROMPTS)
def test_hostile_prompts_metadata_is_a_clear_dataset_error(tmp_path, case):
    shard(tmp_path, prompts=HOSTILE_PROMPTS[case])
    with pytest.raises(DatasetError, match="prompts"):
        ShardDataset(tmp_path)


HOSTILE_TENSORS = {
    "text of 2 dims": {"text": torch.zeros(2, 3)},
    "noise of 3 dims": {"noise": torch.zeros(2, 4, 4)},
    "seed as float": {"seed": torch.zeros(2)},
    "prompt_index as int32": {"prompt_index": torch.zeros(2, dtype=torch.int32)},
    "noise as int64": {"noise": torch.zeros(2, 2, 4, 4, dtype=torch.int64)},
    "counts differ": {"seed": torch.zeros(3, dtype=torch.int64)},
    "mask tokens differ": {"text_mask": torch.ones(2, 4, dtype=torch.uint8)},
    "empty noise": {"noise": torch.zeros(2, 0, 4, 4)},
}


@pytest.mark.parametrize("case", HOSTILE_TENSORS)
def test_tensors_of_the_wrong_rank_dtype_or_count_are_refused_from_the_header(tmp_path, case):
    shard(tmp_path, tensor_changes=HOSTILE_TENSORS[case])
    with pytest.raises(DatasetError, match="shard-00000.safetensors: tensor"):
        ShardDataset(tmp_path)


def test_non_finite_samples_are_refused_when_read(tmp_path):
    noise = torch.zeros(2, 2, 4, 4)
    noise[1, 0, 0, 0] = float("nan")
    shard(tmp_path, tensor_changes={"noise": noise})
    with pytest.raises(DatasetError, match="NaN or infinite"):
        list(ShardDataset(tmp_path).iterate())


def test_shards_are_ordered_numerically_past_99999_and_numbering_continues(tmp_path):
    for number in (99998, 99999, 100000, 7):
        shard(tmp_path, number)
    assert [p.name for p in shard_paths(tmp_path)] == [
        "shard-00007.safetensors",
        "shard-99998.safetensors",
        "shard-99999.safetensors",
        "shard-100000.safetensors",
    ]
    with ShardWriter(tmp_path, INFO, shard_size=1) as writer:
        writer.append(torch.zeros(1, 3, 5), torch.zeros(1, 2, 4, 4), [9], [9])
    assert shard_paths(tmp_path)[-1].name == "shard-100001.safetensors"
    assert len(ShardDataset(tmp_path)) == 9
    (tmp_path / "shard-latest.safetensors").write_bytes(b"")
    with pytest.raises(DatasetError, match="shard-latest.safetensors is not named shard-<number>"):
        ShardDataset(tmp_path)


def test_the_writer_flushes_by_bytes_as_well_as_by_count(tmp_path):
    sample_bytes = 5 * 3 * 5 + 4 * 2 * 4 * 4 + 16  # text + mask, noise, prompt index and seed
    writer = ShardWriter(tmp_path, INFO, shard_size=1000, shard_bytes=3 * sample_bytes)
    for p in range(4):
        writer.append(torch.zeros(2, 3, 5), torch.zeros(2, 2, 4, 4), [p, p], [0, 1])
        assert writer.pending < 3  # never holds more than the byte budget
    assert writer.capacity == 3
    writer.close()
    assert [s.count for s in ShardDataset(tmp_path).shards] == [3, 3, 2]
    huge = ShardWriter(tmp_path / "one", INFO, shard_bytes=1)  # a sample larger than the budget: one per shard
    huge.append(torch.zeros(2, 3, 5), torch.zeros(2, 2, 4, 4), [0, 0], [0, 1])
    assert huge.pending == 0 and len(ShardDataset(tmp_path / "one").shards) == 2


def test_a_killed_writers_temporary_file_is_removed_and_a_failed_write_leaves_none(tmp_path, monkeypatch):
    shard(tmp_path, 0)
    (tmp_path / ".shard-00001.safetensors.k3j9x.tmp").write_bytes(b"half a shard")  # from io.write_atomically
    (tmp_path / "shard-00001.tmp").write_bytes(b"half a shard")  # from older versions
    writer = ShardWriter(tmp_path, INFO, shard_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.safetensors"]

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("noisear.train.data.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        writer.append(torch.zeros(1, 3, 5), torch.zeros(1, 2, 4, 4), [5], [5])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.safetensors"]


def test_shards_get_normal_permissions_from_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with ShardWriter(tmp_path, INFO, shard_size=1) as writer:
            writer.append(torch.zeros(1, 3, 5), torch.zeros(1, 2, 4, 4), [0], [0])
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shard-00000.safetensors").stat().st_mode) == 0o644  # safetensors alone: 0o600


# Files that are not plain shards, shards reached twice, shards that change ------------------------------------
@pytest.mark.parametrize("reader", ["ShardDataset", "inspect_dataset"])
def test_a_fifo_named_like_a_shard_is_refused_before_it_is_opened(tmp_path, reader):
    shard(tmp_path, 0)
    os.mkfifo(tmp_path / "shard-00001.safetensors")
    code = (
        "import sys\nfrom noisear.train.data import DatasetError, ShardDataset, inspect_dataset\n"
        f"try:\n    {reader}(sys.argv[1])\nexcept DatasetError as err:\n    print(err)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:  # in a process of its own: opening a FIFO blocks inside safetensors, holding the interpreter
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("still waiting on the FIFO after 60 s")
    assert "shard-00001.safetensors is a FIFO, not a shard file" in done.stdout, done.stderr


def test_a_folder_or_a_broken_link_named_like_a_shard_is_refused(tmp_path):
    shard(tmp_path, 0)
    (tmp_path / "shard-00001.safetensors").mkdir()
    with pytest.raises(DatasetError, match="shard-00001.safetensors is a folder"):
        ShardDataset(tmp_path)
    (tmp_path / "shard-00001.safetensors").rmdir()
    os.symlink(tmp_path / "gone", tmp_path / "shard-00001.safetensors")
    with pytest.raises(DatasetError, match="a broken link"):
        ShardDataset(tmp_path)


@pytest.mark.parametrize("link", ["bucket symlinked twice", "shard hard-linked into two buckets"])
def test_a_shard_reached_twice_is_refused(tmp_path, link):
    shard(tmp_path / "one", 0)
    if link == "bucket symlinked twice":
        os.symlink(tmp_path / "one", tmp_path / "two")
    else:
        (tmp_path / "two").mkdir()
        os.link(tmp_path / "one/shard-00000.safetensors", tmp_path / "two/shard-00000.safetensors")
    with pytest.raises(DatasetError, match="are the same file .*remove one of the links"):
        ShardDataset(tmp_path)


def test_a_shard_replaced_after_the_dataset_was_opened_is_refused_when_read(tmp_path):
    shard(tmp_path, 0)
    dataset = ShardDataset(tmp_path)
    wider = tmp_path / "elsewhere"
    shard(wider, 0, tensor_changes={"noise": torch.zeros(2, 2, 8, 8)})
    os.replace(wider / "shard-00000.safetensors", tmp_path / "shard-00000.safetensors")  # what a collector's rename does
    with pytest.raises(DatasetError, match="was replaced, changed or removed after the dataset was opened"):
        dataset.load_rows(0, np.array([0, 1]))


def test_the_fingerprint_follows_the_data_not_its_place(tmp_path):
    shard(tmp_path / "a", 0)
    first = ShardDataset(tmp_path / "a").fingerprint()
    (tmp_path / "a").rename(tmp_path / "b")
    assert ShardDataset(tmp_path / "b").fingerprint() == first
    shard(tmp_path / "b", 1)
    assert ShardDataset(tmp_path / "b").fingerprint() != first
    shard(tmp_path / "c", 0, tensor_changes={"seed": torch.ones(2, dtype=torch.int64)})
    assert ShardDataset(tmp_path / "c").fingerprint() != first


def test_inspecting_an_empty_dataset_says_so_instead_of_nan(tmp_path):
    shard(tmp_path, 0, tensor_changes=tensors(count=0))
    report = inspect_dataset(tmp_path)
    assert report["samples"] == 0 and report["channel_mean"] == [] and report["channel_std"] == []
    assert any("the dataset is empty" in warning for warning in report["warnings"])


def test_the_fingerprint_tells_apart_shards_with_the_same_prompts_and_seeds_but_other_values(tmp_path):
    original = shard(tmp_path / "a", 0).read_bytes()
    length = int.from_bytes(original[:8], "little")
    start, stop = json.loads(original[8 : 8 + length])["noise"]["data_offsets"]
    changed = bytearray(original)
    changed[8 + length + start : 8 + length + stop] = torch.ones(2, 2, 4, 4).numpy().tobytes()  # the same header bytes
    (tmp_path / "b").mkdir()
    (tmp_path / "b/shard-00000.safetensors").write_bytes(bytes(changed))
    assert ShardDataset(tmp_path / "a").fingerprint() != ShardDataset(tmp_path / "b").fingerprint()
