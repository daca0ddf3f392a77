"""The workflow files are exactly what workflows/make_workflows.py writes, every widget value is named (the
browser test compares the UI against these names), and every workflow has a thumbnail.
The host suite checks them against a live ComfyUI (test_comfyui_host.py) and its real frontend (test_browser.py)."""

import importlib
import json
import sys
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


@pytest.fixture(scope="module")
def generator():
    """workflows/make_workflows.py as a module (workflows/ is not a package)."""
    sys.path.insert(0, str(WORKFLOWS))
    try:
        return importlib.import_module("make_workflows")
    finally:
        sys.path.remove(str(WORKFLOWS))


def test_every_workflow_file_is_the_generators_output(generator):
    graphs = {graph.name: graph for graph in generator.graphs()}
    assert len(graphs) == len(generator.graphs()), "two graphs share a name"
    files = {path.stem for path in WORKFLOWS.glob("*.json")}
    assert files == set(graphs), "workflow files without a generator graph, or graphs not written"
    for name, graph in graphs.items():
        on_disk = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
        assert on_disk == generator.to_ui(graph), f"{name}.json is stale: run python workflows/make_workflows.py"


def test_every_widget_value_is_named_in_comfyuis_order(generator):
    for graph in generator.graphs():
        intended = generator.intended_widgets(graph)
        for node in generator.to_ui(graph)["nodes"]:
            assert list(intended[node["id"]].values()) == node["widgets_values"], (graph.name, node["type"])


def test_a_value_without_a_name_is_refused(generator):
    node = generator.Node("x", "EmptyLatentImage", 0, 0, [1024, 1024])  # batch_size missing
    with pytest.raises(ValueError, match="WIDGET_NAMES"):
        generator.widget_values(node)


def test_every_workflow_has_a_thumbnail():
    for path in WORKFLOWS.glob("*.json"):
        assert path.with_suffix(".jpg").is_file(), f"{path.name} has no thumbnail for ComfyUI's template browser"
