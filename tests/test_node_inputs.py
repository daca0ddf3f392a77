"""Backward compatibility of the nodes' inputs: workflows saved with an earlier version must keep loading.

tests/node_inputs.json is a committed snapshot of every node in NODE_CLASS_MAPPINGS: each input's type,
whether it is required, its default, min / max and combo options, and the node's output types. A saved
workflow names a node by its class type, links its inputs by name and lists its widget values in order,
so against the snapshot a change fails when
- a node or an input is removed or renamed, or an optional input becomes required;
- an input's type, default or control_after_generate changes, min rises or max falls;
- a combo option disappears, unless RETIRED below names it with the migration that still reads it;
- a new widget input comes before an existing one, or existing ones change order (old workflows would
  hand their values to the wrong widgets);
- an existing output changes type or position.
Adding nodes, inputs (widgets after the existing ones), options and outputs (at the end) is allowed; the
snapshot then has to be rewritten to cover them, a deliberate step:

    python tests/test_node_inputs.py --write

The snapshot is made without ComfyUI, with tests/fake_comfy.py's host whose lists are empty: the loader's
checkpoint files and KSampler's sampler and scheduler names are ComfyUI's lists, not the pack's.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import fake_comfy
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).resolve().parent / "node_inputs.json"
WRITE_COMMAND = "python tests/test_node_inputs.py --write"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}  # shown as widgets, saved in widgets_values
RECORDED = ("default", "min", "max", "control_after_generate", "forceInput")
UNCHANGEABLE = ("type", "default", "control_after_generate", "forceInput")

# Option values no longer offered but still read from old workflows: {class type: {input: {value: migration}}}.
# The node's VALIDATE_INPUTS must name the input (ComfyUI then skips its own list check) and accept the value.
CENTRE_MODE = {"centre + Gaussian border": "runs as 'any size', with a note on the node saying so"}
RETIRED: dict[str, dict[str, dict[str, str]]] = {
    "NoiseARNoise": {"size_mode": CENTRE_MODE},
    "NoiseARLatent": {"size_mode": CENTRE_MODE},
}


@contextmanager
def host_without_lists():
    """The fake ComfyUI of tests/fake_comfy.py with no model files and no sampler or scheduler names."""
    with pytest.MonkeyPatch.context() as monkeypatch, tempfile.TemporaryDirectory() as folder:
        fakes = fake_comfy.install(monkeypatch, Path(folder))
        monkeypatch.setattr(fakes.folder_paths, "folder_names_and_paths", defaultdict(lambda: ([], set())))
        monkeypatch.setattr(fakes.comfy.samplers, "SCHEDULER_NAMES", [])
        monkeypatch.setattr(fakes.comfy.samplers, "KSampler", SimpleNamespace(SAMPLERS=[], SCHEDULERS=[]))
        yield


def interface(node: type) -> dict:
    """{"inputs": {name: {type, required, options?, default?, min?, max?, ...}}, "outputs": [type]} of a node
    class, in INPUT_TYPES' order. Hidden inputs are filled by ComfyUI and never saved in a workflow."""
    inputs = {}
    for group in ("required", "optional"):
        for name, (kind, *rest) in node.INPUT_TYPES().get(group, {}).items():
            spec = rest[0] if rest else {}
            record = {"type": "COMBO" if isinstance(kind, (list, tuple)) else kind, "required": group == "required"}
            if record["type"] == "COMBO":
                record["options"] = list(kind) if isinstance(kind, (list, tuple)) else list(spec.get("options", []))
            record.update({key: spec[key] for key in RECORDED if key in spec})
            inputs[name] = record
    return {"inputs": inputs, "outputs": list(node.RETURN_TYPES)}


def current_interfaces() -> dict:
    """The interface of every node in NODE_CLASS_MAPPINGS, by class type, as the snapshot stores it."""
    from nodes import NODE_CLASS_MAPPINGS

    with host_without_lists():
        interfaces = {name: interface(NODE_CLASS_MAPPINGS[name]) for name in sorted(NODE_CLASS_MAPPINGS)}
    return json.loads(json.dumps(interfaces))


def widgets(node: dict) -> list[str]:
    """The node's widget values in a saved workflow's order (a seed's control_after_generate follows it)."""
    names = []
    for name, record in node["inputs"].items():
        if record["type"] in WIDGET_TYPES and not record.get("forceInput"):
            names += [name, f"{name}: control_after_generate"] if record.get("control_after_generate") else [name]
    return names


def breaking_changes(old: dict, new: dict, retired: dict = RETIRED) -> list[str]:
    """What in ``new`` would break a workflow saved against ``old`` (both as current_interfaces gives them)."""
    problems = []
    for node_type, was in old.items():
        if node_type not in new:
            problems.append(f"{node_type}: node removed or renamed")
            continue
        now = new[node_type]
        for name, before in was["inputs"].items():
            where = f"{node_type}.{name}"
            after = now["inputs"].get(name)
            if after is None:
                problems.append(f"{where}: input removed or renamed")
                continue
            if after["required"] and not before["required"]:
                problems.append(f"{where}: optional input became required")
            for key in UNCHANGEABLE:
                if before.get(key) != after.get(key):
                    problems.append(f"{where}: {key} changed from {before.get(key)!r} to {after.get(key)!r}")
            if after.get("min", -math.inf) > before.get("min", -math.inf):
                problems.append(f"{where}: min rose from {before.get('min')!r} to {after['min']!r}")
            if after.get("max", math.inf) < before.get("max", math.inf):
                problems.append(f"{where}: max fell from {before.get('max')!r} to {after['max']!r}")
            kept = set(after.get("options", [])) | set(retired.get(node_type, {}).get(name, {}))
            gone = [value for value in before.get("options", []) if value not in kept]
            if gone:
                problems.append(f"{where}: options {gone} disappeared (list them in RETIRED with the migration that reads them)")
        if widgets(now)[: len(widgets(was))] != widgets(was):
            problems.append(f"{node_type}: widget order {widgets(was)} became {widgets(now)}; add new widgets after these")
        if now["outputs"][: len(was["outputs"])] != was["outputs"]:
            problems.append(f"{node_type}: outputs {was['outputs']} became {now['outputs']}; add new outputs at the end")
    return problems


@pytest.fixture(scope="module")
def snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def current() -> dict:
    return current_interfaces()


def test_no_change_breaks_a_saved_workflow(snapshot, current):
    problems = breaking_changes(snapshot, current)
    assert not problems, "changes that break saved workflows:\n" + "\n".join(problems)


def test_the_snapshot_covers_every_node_and_input(snapshot, current):
    assert current == snapshot, f"the nodes' inputs changed compatibly (additions); record them: {WRITE_COMMAND}"


def test_every_retired_option_is_still_read(current):
    from nodes import NODE_CLASS_MAPPINGS

    for node_type, by_input in RETIRED.items():
        node = NODE_CLASS_MAPPINGS[node_type]
        defaults = {name: record.get("default") for name, record in current[node_type]["inputs"].items()}
        parameters = inspect.signature(node.VALIDATE_INPUTS).parameters
        for name, values in by_input.items():
            assert name in parameters, f"{node_type}.VALIDATE_INPUTS must name {name}, or ComfyUI refuses its retired values"
            arguments = {key: defaults.get(key) for key in parameters}
            assert isinstance(node.VALIDATE_INPUTS(**{**arguments, name: "no such value"}), str)
            for value in values:
                assert value not in current[node_type]["inputs"][name]["options"], f"{value!r} is offered again"
                assert node.VALIDATE_INPUTS(**{**arguments, name: value}) is True, (node_type, name, value)


NODE = {
    "inputs": {
        "model": {"type": "MODEL", "required": True},
        "seed": {"type": "INT", "required": True, "default": 0, "min": 0, "max": 10, "control_after_generate": True},
        "mode": {"type": "COMBO", "required": True, "options": ["a", "b"], "default": "a"},
        "noise": {"type": "NOISE", "required": False},
    },
    "outputs": ["NOISE", "STRING"],
}


def changed(edit) -> dict:
    node = deepcopy(NODE)
    edit(node)
    return {"Node": node}


BREAKING = {
    "input removed": lambda node: node["inputs"].pop("model"),
    "input renamed": lambda node: node["inputs"].update(sampler=node["inputs"].pop("mode")),
    "optional became required": lambda node: node["inputs"]["noise"].update(required=True),
    "type changed": lambda node: node["inputs"]["seed"].update(type="FLOAT"),
    "default changed": lambda node: node["inputs"]["mode"].update(default="b"),
    "min rose": lambda node: node["inputs"]["seed"].update(min=1),
    "max fell": lambda node: node["inputs"]["seed"].update(max=9),
    "control_after_generate dropped": lambda node: node["inputs"]["seed"].pop("control_after_generate"),
    "option removed": lambda node: node["inputs"]["mode"].update(options=["a"]),
    "widget inserted before another": lambda node: node.update(
        inputs={"steps": {"type": "INT", "required": True}, **node["inputs"]}
    ),
    "output changed": lambda node: node.update(outputs=["LATENT", "STRING"]),
}
ALLOWED = {
    "nothing": lambda node: None,
    "widget added at the end": lambda node: node["inputs"].update(steps={"type": "INT", "required": True, "default": 1}),
    "socket added first": lambda node: node.update(inputs={"clip": {"type": "CLIP", "required": False}, **node["inputs"]}),
    "option added": lambda node: node["inputs"]["mode"].update(options=["a", "b", "c"]),
    "range widened": lambda node: node["inputs"]["seed"].update(min=-1, max=11),
    "required became optional": lambda node: node["inputs"]["model"].update(required=False),
    "output added at the end": lambda node: node["outputs"].append("IMAGE"),
}


@pytest.mark.parametrize("edit", BREAKING.values(), ids=BREAKING.keys())
def test_a_breaking_change_is_caught(edit):
    assert breaking_changes({"Node": NODE}, changed(edit), retired={})


def test_a_removed_node_is_caught():
    assert breaking_changes({"Node": NODE}, {"Other": NODE}, retired={}) == ["Node: node removed or renamed"]


@pytest.mark.parametrize("edit", ALLOWED.values(), ids=ALLOWED.keys())
def test_an_allowed_change_passes(edit):
    assert breaking_changes({"Node": NODE}, changed(edit), retired={}) == []


def test_a_retired_option_may_disappear():
    new = changed(lambda node: node["inputs"]["mode"].update(options=["a"]))
    assert breaking_changes({"Node": NODE}, new, retired={"Node": {"mode": {"b": "read as 'a'"}}}) == []


def snapshot_text(interfaces: dict) -> str:
    """JSON with one line per input and per output list, so that a diff of the snapshot reads like the change."""
    nodes = []
    for node_type, node in interfaces.items():
        inputs = ",\n".join(f"   {json.dumps(name)}: {json.dumps(record)}" for name, record in node["inputs"].items())
        nodes.append(
            f' {json.dumps(node_type)}: {{\n  "inputs": {{\n{inputs}\n  }},\n  "outputs": {json.dumps(node["outputs"])}\n }}'
        )
    return "{\n" + ",\n".join(nodes) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Rewrite tests/node_inputs.json from the nodes as they are now.")
    parser.add_argument("--write", action="store_true", required=True, help="rewrite the snapshot (a deliberate step)")
    parser.parse_args()
    sys.path.insert(0, str(REPO))  # run as a script from any folder: `nodes` and `noisear` live in the repository root
    interfaces = current_interfaces()
    SNAPSHOT.write_text(snapshot_text(interfaces), encoding="utf-8")
    print(f"wrote {SNAPSHOT.relative_to(REPO)}: {len(interfaces)} nodes")


if __name__ == "__main__":
    main()
