"""Runs of the nodes one after another, as a user queues them: re-running the collector into the same folder,
changing its MODEL, text encoder, settings or latent size, interrupting it, and replacing a checkpoint between
queue runs. No earlier result is lost or changed, and no run quietly does less than it says, without an explicit
action (another folder name).

ComfyUI's rule for reusing a node's output between queue runs (execution.py's cache) is played by ``Queue``:
the same inputs and the same IS_CHANGED value reuse the last output, anything else runs the node again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import fake_comfy
import pytest
import torch
from builders import random_model
from test_collector import Clip, fakes, run  # noqa: F401  (the fixture, used by every test)

from nodes import host
from nodes.definitions import NoiseARLoader, NoiseARNoiseNode
from noisear import NoiseARConfig, save
from noisear.train.data import ShardDataset

pytestmark = pytest.mark.usefixtures("fakes")
PRIOR = NoiseARConfig(patch_size=4, channels=4, latent_height=8, latent_width=8, d_model=16, d_ff=24, text_dim=8)


class Queue:
    """Queue runs with ComfyUI's output cache: a node whose inputs and IS_CHANGED are those of its last run
    gives its last output again (a NaN IS_CHANGED never equals itself, so such a node always runs). Widget
    values compare by value, linked values by identity: a re-run upstream node gives a new object, which makes
    ComfyUI run the nodes below it again."""

    def __init__(self) -> None:
        self.last: dict[type, tuple[tuple, object]] = {}

    def run(self, node: type, **inputs):
        changed = node.IS_CHANGED(**inputs) if hasattr(node, "IS_CHANGED") else None
        widget = (bool, int, float, str)
        key = (tuple(sorted((k, v if isinstance(v, widget) else id(v)) for k, v in inputs.items())), changed)
        cached = self.last.get(node)
        if cached is None or cached[0] != key or (isinstance(changed, float) and math.isnan(changed)):
            output = getattr(node(), node.FUNCTION)(**inputs)
            self.last[node] = (key, output["result"] if isinstance(output, dict) else output)
        return self.last[node][1]


def written(folder: Path) -> dict[str, bytes]:
    """Every shard file under ``folder`` (size folders included) with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*.safetensors"))}


def assert_kept(before: dict[str, bytes], folder: Path) -> None:
    """Every shard written before is still there, byte for byte."""
    after = written(folder)
    assert {name: after.get(name) for name in before} == before


def test_runs_of_the_collector_keep_every_earlier_pair_and_do_what_they_say(tmp_path, monkeypatch):
    output = tmp_path / "output"
    assert "wrote 4, skipped 0" in run("one\ntwo", k=2, dataset="sets/64x64")
    history = [written(output)]

    assert "wrote 0, skipped 4" in run("one\ntwo", k=2, dataset="sets/64x64")  # the same collection again
    assert "wrote 2, skipped 4" in run("two\none\nthree", k=2, dataset="sets/64x64")  # a prompt added
    assert_kept(history[-1], output)
    history.append(written(output))

    refusals = {  # what a user may change by mistake -> what the refusal says
        "another size": (dict(height=16), "holds latents of 64 x 64 px .* set dataset to sets/64x128"),
        "another MODEL": (dict(model=fake_comfy.Model(weights=fake_comfy.tiny_weights(seed=7))), "another MODEL"),
        "another model_name": (dict(model_name="renamed"), r"source_model 'tiny' there, 'renamed' here"),
        "another text encoder": (dict(clip=Clip(scale=3.0)), "differs from what the text encoder gives now"),
    }
    for change, (arguments, message) in refusals.items():
        with pytest.raises(ValueError, match=message):
            run("one\ntwo\nfour", k=3, dataset="sets/64x64", **arguments)
        assert written(output) == history[-1], change  # nothing written, nothing changed

    real = host.throw_if_interrupted
    calls = {"n": 0}

    def cancel_on_the_third_batch():
        calls["n"] += 1
        if calls["n"] == 3:
            raise fake_comfy.InterruptProcessingException()
        real()

    monkeypatch.setattr(host, "throw_if_interrupted", cancel_on_the_third_batch)
    with pytest.raises(fake_comfy.InterruptProcessingException):
        run("one\ntwo\nthree\nfour", k=4, dataset="sets/64x64")
    monkeypatch.setattr(host, "throw_if_interrupted", real)
    assert_kept(history[-1], output)
    summary = run("one\ntwo\nthree\nfour", k=4, dataset="sets/64x64")
    data = ShardDataset(output / "sets" / "64x64")
    assert len(data) == len(data.pairs()) == 16  # resumed without duplicates or gaps
    assert f"skipped {16 - int(summary.split('wrote ')[1].split(',')[0])}" in summary
    assert_kept(history[-1], output)

    assert "wrote 2" in run("one", k=2, dataset="sets/64x128", height=16)  # the explicit way: a size folder
    assert "wrote 2" in run("one", k=2, dataset="other_model", model=fake_comfy.Model(weights=fake_comfy.tiny_weights(7)))
    assert ShardDataset(output / "sets").noise_shapes == [(4, 8, 8), (4, 16, 8)]
    assert_kept(history[-1], output)


@pytest.fixture
def prior_file() -> Path:
    host.register_model_folder()
    folder = Path(host.model_folders()[0])
    folder.mkdir(parents=True)
    save(random_model(PRIOR, seed=1), folder / "mine.safetensors")
    return folder / "mine.safetensors"


POSITIVE = Clip().encode_from_tokens_scheduled("a red cube")  # a CONDITIONING output that stays cached


def queued_noise(queue: Queue) -> torch.Tensor:
    """Loader -> NoiseAR Noise -> the noise a sampler gets, as one queue run."""
    prior, _ = queue.run(NoiseARLoader, ckpt_name="mine.safetensors", device="auto", dtype="fp32")
    noise = queue.run(
        NoiseARNoiseNode, noisear_model=prior, positive=POSITIVE, noise_seed=3, temperature=0.5, size_mode="any size"
    )
    return noise[0].generate_noise({"samples": torch.zeros(1, 4, 8, 8)})


@pytest.mark.parametrize("how", ["cp -p onto the file", "rsync -a (a rename)", "touch only"])
def test_a_checkpoint_replaced_between_queue_runs_draws_with_the_file_now_there(prior_file, tmp_path, how):
    queue = Queue()
    first = queued_noise(queue)
    assert torch.equal(queued_noise(queue), first)  # nothing changed: the cached prior draws the same noise
    stat = prior_file.stat()
    if how == "touch only":
        prior_file.touch()
    else:
        save(random_model(PRIOR, seed=2), tmp_path / "retrained.safetensors")
        content = (tmp_path / "retrained.safetensors").read_bytes()
        if how.startswith("cp"):
            prior_file.write_bytes(content)
        else:
            (prior_file.parent / ".mine.tmp").write_bytes(content)
            (prior_file.parent / ".mine.tmp").replace(prior_file)
        assert prior_file.stat().st_size == stat.st_size
    os.utime(prior_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p and rsync -a keep it
    assert prior_file.stat().st_mtime_ns == stat.st_mtime_ns
    fresh = queued_noise(Queue())  # what a restarted ComfyUI draws with the file now there
    assert torch.equal(queued_noise(queue), fresh)
    assert torch.equal(fresh, first) == (how == "touch only")
