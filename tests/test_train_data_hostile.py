"""Dataset shards under stress: hostile metadata and headers, byte-bounded buffering, killed writers,
numeric shard order past shard 99999."""

import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from noisear.train.data import FORMAT_NAME, FORMAT_VERSION, DatasetError, DatasetInfo, ShardDataset, ShardWriter, shard_paths

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
