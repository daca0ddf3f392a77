"""The workflow files are exactly what the generators in workflows/ write, every widget value is named (the
browser test compares the UI against these names), and every workflow has a thumbnail.
The host suite checks them against a live ComfyUI (test_comfyui_host.py) and its real frontend (test_browser.py)."""

import importlib
import json
import sys
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
GENERATORS = ("make_workflows", "make_issue3_workflows")


@pytest.fixture(scope="module")
def generated() -> dict:
    """{workflow name: (generator module, graph)}."""
    sys.path.insert(0, str(WORKFLOWS))
    try:
        modules = [importlib.import_module(name) for name in GENERATORS]
    finally:
        sys.path.remove(str(WORKFLOWS))
    return {graph.name: (modules[0], graph) for module in modules for graph in module.graphs()}


def test_every_workflow_file_is_the_generators_output(generated):
    files = {path.stem for path in WORKFLOWS.glob("*.json")}
    assert files == set(generated), "workflow files without a generator graph, or graphs not written"
    for name, (base, graph) in generated.items():
        on_disk = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
        assert on_disk == base.to_ui(graph), f"{name}.json is stale: run python workflows/{GENERATORS[0]}.py (and the others)"


def test_every_widget_value_is_named_in_comfyuis_order(generated):
    for name, (base, graph) in generated.items():
        intended = base.intended_widgets(graph)
        workflow = base.to_ui(graph)
        for node in workflow["nodes"]:
            assert list(intended[node["id"]].values()) == node["widgets_values"], (name, node["type"])


def test_a_value_without_a_name_is_refused(generated):
    base, graph = next(iter(generated.values()))
    node = base.Node("x", "EmptyLatentImage", 0, 0, [1024, 1024])  # batch_size missing
    with pytest.raises(ValueError, match="WIDGET_NAMES"):
        base.widget_values(node)


def test_every_workflow_has_a_thumbnail():
    for path in WORKFLOWS.glob("*.json"):
        assert path.with_suffix(".jpg").is_file(), f"{path.name} has no thumbnail for ComfyUI's template browser"
