"""The Dataset Collector writes only inside ComfyUI's output folder (as SaveImage), and bounds its memory.

Paths go through the real nodes.host and a folder_paths fake that, like ComfyUI's, checks nothing
itself: every refusal below is the node's own."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_collector import fakes, run  # noqa: F401  (the fixture, used by every test)

from nodes.collector import dataset_directory
from nodes.definitions import DatasetCollectorNode
from nodes.widgets import NoiseARNodeError
from noisear.train.data import SHARD_BYTES, DatasetInfo, ShardDataset, ShardWriter

pytestmark = pytest.mark.usefixtures("fakes")


def files_under(path):
    return sorted(os.path.relpath(os.path.join(root, name), path) for root, _, names in os.walk(path) for name in names)


ESCAPES = ["../outside", "../../../../tmp/noisear_escape", "a/../../outside", "./../outside", "a/b/../../../outside", ".."]


@pytest.mark.parametrize("name", ESCAPES)
def test_names_that_climb_out_of_the_output_folder_are_refused_and_nothing_is_created(tmp_path, name):
    with pytest.raises(NoiseARNodeError, match="saving outside the output folder is not allowed"):
        run("one", dataset=name)
    assert files_under(tmp_path) == [] and sorted(os.listdir(tmp_path)) == []


def test_absolute_paths_are_refused_even_when_they_point_into_the_output_folder(tmp_path):
    for name in ["/tmp/noisear_escape", str(tmp_path / "outside"), str(tmp_path / "output" / "set"), "//x", "/"]:
        with pytest.raises(NoiseARNodeError, match="relative to ComfyUI's output folder"):
            run("one", dataset=name)
    assert files_under(tmp_path) == []


def test_a_symlinked_subfolder_that_leads_out_is_refused(tmp_path):
    output, outside = tmp_path / "output", tmp_path / "outside"
    (output / "inner").mkdir(parents=True)
    outside.mkdir()
    (output / "link").symlink_to(outside, target_is_directory=True)
    (output / "inner" / "up").symlink_to(tmp_path, target_is_directory=True)
    for name in ["link", "link/set", "link/deep/er", "inner/up/outside", "inner/up/output/../outside"]:
        with pytest.raises(NoiseARNodeError, match=r"resolves to .*saving outside the output folder is not allowed"):
            run("one", dataset=name)
    assert os.listdir(outside) == []


def test_relative_names_inside_the_output_folder_work_nested_normalised_and_through_inner_links(tmp_path):
    output = tmp_path / "output"
    assert "wrote 3" in run("one", dataset="sets/sdxl/1024x1024")
    assert len(ShardDataset(output / "sets/sdxl/1024x1024")) == 3
    assert "skipped 3" in run("one", dataset="sets/./other/../sdxl//1024x1024")  # the same folder
    (output / "alias").symlink_to(output / "sets", target_is_directory=True)  # a link that stays inside
    assert "skipped 3" in run("one", dataset="alias/sdxl/1024x1024")
    assert "wrote 3" in run("one", dataset="..hidden-looking name with spaces")
    assert dataset_directory("sets/sdxl/1024x1024") == os.path.realpath(output / "sets/sdxl/1024x1024")


def test_odd_names_get_a_clear_message(tmp_path):
    with pytest.raises(NoiseARNodeError, match="must name a folder"):
        run("one", dataset="   ")
    for name in ["set\x00/x", "/".join(["d"] * 2000)]:
        with pytest.raises(NoiseARNodeError, match="plain folder name of at most 1024 characters without NUL"):
            run("one", dataset=name)
    for name in [".", "a/..", "./"]:
        with pytest.raises(NoiseARNodeError, match="is the output folder itself; name a subfolder"):
            run("one", dataset=name)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "taken").write_text("a file")
    with pytest.raises(ValueError, match="cannot create the dataset folder .*taken"):
        run("one", dataset="taken")


CONTROL_NAMES = {
    "newline": "set\nnext",
    "tab": "set\tx",
    "escape": "set\x1b[31m",
    "delete": "set\x7f",
    "C1 control": "set\x85x",
    "right-to-left override": "set\u202etxt.exe",
    "left-to-right embedding": "\u202aset",
    "pop directional formatting": "set\u202c",
    "first strong isolate": "set/\u2068x",
    "pop directional isolate": "set\u2069",
    "line separator": "set\u2028x",
}


@pytest.mark.parametrize("case", list(CONTROL_NAMES))
def test_names_with_control_or_bidirectional_characters_are_refused_and_nothing_is_created(tmp_path, case):
    """Such a folder name shows as another name in file managers and terminals (or breaks lines in logs)."""
    with pytest.raises(NoiseARNodeError, match=r"dataset must not hold control or bidirectional-formatting characters"):
        run("one", dataset=CONTROL_NAMES[case])
    assert files_under(tmp_path) == [] and sorted(os.listdir(tmp_path)) == []


def test_widget_limits_cannot_hold_more_than_the_byte_budget_before_a_write(tmp_path):
    required = DatasetCollectorNode.INPUT_TYPES()["required"]
    largest_shard, largest_batch = required["shard_size"][1]["max"], required["batch_size"][1]["max"]
    writer = ShardWriter(tmp_path, DatasetInfo(), shard_size=largest_shard)
    writer.item_shapes = {"text": (77, 2048), "noise": (4, 128, 128)}  # SDXL at 1024x1024: ~0.9 MB a sample
    sample_bytes = 5 * 77 * 2048 + 4 * 4 * 128 * 128 + 16
    held = (writer.capacity - 1 + largest_batch) * sample_bytes  # most buffered just before a flush
    assert writer.capacity * sample_bytes <= SHARD_BYTES and held < 2 * SHARD_BYTES
    assert largest_shard * sample_bytes > SHARD_BYTES  # so it is the byte budget that bounds it


def test_the_collector_flushes_by_bytes(tmp_path, monkeypatch):
    budgets = []
    plain_init = ShardWriter.__init__

    def small_budget(self, directory, info, shard_size=1024, shard_bytes=SHARD_BYTES):
        budgets.append(shard_bytes)
        plain_init(self, directory, info, shard_size, shard_bytes=3 * (5 * 12 * 8 + 4 * 4 * 8 * 8 + 16))

    monkeypatch.setattr(ShardWriter, "__init__", small_budget)
    run("one\ntwo", k=4)  # shard_size 4, but 3 samples fill the budget
    assert budgets == [SHARD_BYTES]
    assert [shard.count for shard in ShardDataset(tmp_path / "output" / "set").shards] == [3, 3, 2]


def test_hostile_metadata_in_the_dataset_folder_is_a_clear_error(tmp_path):
    run("one")
    shard = tmp_path / "output" / "set" / "shard-00000.safetensors"
    with safe_open(str(shard), framework="pt") as handle:
        tensors, metadata = {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()
    info = json.loads(metadata["info"])
    for steps in ["3", None, 1e400, [3]]:
        save_file(tensors, str(shard), metadata={**metadata, "info": json.dumps({**info, "steps": steps})})
        with pytest.raises(ValueError, match="shard-00000.safetensors: .*'steps' must be an integer"):
            run("one")
    save_file(tensors, str(shard), metadata={**metadata, "prompts": "[not json"})
    with pytest.raises(ValueError, match="shard-00000.safetensors: shard metadata 'prompts' is not valid JSON"):
        run("one")


@pytest.mark.parametrize(
    "name, value",
    [
        ("seeds_per_prompt", 0),
        ("steps", 1),
        ("text_tokens", 0),
        ("batch_size", -3),
        ("shard_size", 0),
        ("first_seed", -1),
        ("cfg_denoise", float("nan")),
        ("cfg_invert", float("inf")),
        ("reward_margin", float("nan")),
    ],
)
def test_widget_values_outside_their_range_or_not_finite_are_refused_before_any_work(tmp_path, name, value):
    """An API-format workflow can carry any number (ComfyUI's min/max checks let NaN through)."""
    values = dict(
        model=object(),
        clip=object(),
        prompts="one",
        negative=[],
        seeds_per_prompt=2,
        first_seed=0,
        scheduler="normal",
        steps=3,
        cfg_denoise=5.5,
        cfg_invert=1.0,
        dataset="set",
        text_tokens=12,
        batch_size=2,
        shard_size=4,
        model_name="",
        latent_image={"samples": torch.zeros(1, 4, 8, 8)},
    )
    with pytest.raises(NoiseARNodeError, match=f"{name} must be a number from"):
        DatasetCollectorNode().collect(**{**values, name: value})
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("latent", [{"samples": torch.zeros(1, 4, 8)}, {"samples": torch.zeros(1, 4, 0, 8)}, {}, None])
def test_a_latent_that_is_not_an_image_latent_is_refused(latent):
    with pytest.raises(NoiseARNodeError, match=r"image latents \[batch, C, H, W\]"):
        DatasetCollectorNode().collect(object(), object(), "one", [], latent, 2, 0, "normal", 3, 5.5, 1.0, "set", 12, 2, 4, "")
