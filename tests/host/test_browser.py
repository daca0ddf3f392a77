"""The example workflows in ComfyUI's real frontend, driven in headless Chromium (tests/host/browser_workflows.js).

Skipped unless all of these are there:
- COMFYUI_PATH (and COMFYUI_PYTHON): a ComfyUI whose Python has the frontend package its requirements.txt
  pins (comfyui-frontend-package; ComfyUI serves it when started without --front-end-root);
- CHROMIUM: a Chromium binary (default: `chromium` on PATH; Debian: `apt-get update && apt-get install chromium`);
- PLAYWRIGHT_CORE_DIR: a folder with node_modules/playwright-core (`npm install playwright-core` in it),
  and `node` on PATH.
Two ComfyUIs run with the real frontend: one without custom nodes (the frontend logs some errors of its own)
and one with this pack. Every workflow in workflows/ is loaded as a dropped file is; a screenshot of each goes
to NOISEAR_SCREENSHOTS (default: a temporary folder), which `python workflows/make_workflows.py --pictures DIR`
turns into the thumbnails and the README's picture.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import PACK_LINK, REPO, comfy_checkout, running_comfy

DRIVER = Path(__file__).resolve().parent / "browser_workflows.js"
WORKFLOW_DIR = REPO / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
# a first-start user: no template dialog, no minimap or canvas statistics in the screenshots, and text drawn at
# every zoom (the frontend's low-detail mode, below a 8 px font, would leave the large A/B graphs without text)
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
}
DRIVER_SECONDS = 600
CORE_NODES = ["KSampler", "EmptyLatentImage"]  # searched in the baseline run: the search box logs errors of its own


def browser_tools() -> tuple[str, Path]:
    """(Chromium binary, playwright-core folder), or skip naming what is missing."""
    _, python = comfy_checkout()
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not chromium or not Path(chromium).exists():
        pytest.skip("browser test: set CHROMIUM to a Chromium binary (Debian: apt-get install chromium)")
    driver = os.environ.get("PLAYWRIGHT_CORE_DIR")
    if not driver or not (Path(driver) / "node_modules" / "playwright-core").is_dir() or not shutil.which("node"):
        pytest.skip(
            "browser test: set PLAYWRIGHT_CORE_DIR to a folder where `npm install playwright-core` ran (node must be on PATH)"
        )
    found = subprocess.run([str(python), "-c", "import comfyui_frontend_package"], capture_output=True)
    if found.returncode:
        pytest.skip("browser test: ComfyUI's Python lacks comfyui-frontend-package (pip install -r requirements.txt)")
    return chromium, Path(driver)


def drive(url: str, workflows: list[Path], search: list[str], screenshots: Path | None, folder: Path) -> dict:
    """Run the driver; workflows named control_* get no screenshot."""
    chromium, driver = browser_tools()
    config, result = folder / "config.json", folder / "result.json"
    config.write_text(
        json.dumps(
            {
                "url": url,
                "chromium": chromium,
                "screenshots": str(screenshots) if screenshots else None,
                "workflows": [
                    {"name": p.stem, "path": str(p), "screenshot": not p.stem.startswith("control_")} for p in workflows
                ],
                "search": search,
            }
        )
    )
    run = subprocess.run(
        ["node", str(DRIVER), str(config), str(result)],
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": str(driver / "node_modules")},
        timeout=DRIVER_SECONDS,
    )
    assert run.returncode == 0, f"browser driver failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def frontend(tmp_path_factory) -> dict:
    """The baseline run (no custom nodes) and the pack's run: console errors, loaded workflows, search."""
    browser_tools()
    screenshots = Path(os.environ.get("NOISEAR_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    screenshots.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("browser")
    controls = broken_copies(root / "controls")
    with running_comfy(root / "baseline", pack=False, test_nodes=False, frontend=True, settings=SETTINGS) as server:
        # the same kinds of interaction: a workflow with missing nodes (all of ours are), searches for core nodes
        baseline = drive(server.url, controls[:1], CORE_NODES, None, root / "baseline")
    with running_comfy(root / "pack", test_nodes=False, frontend=True, settings=SETTINGS) as server:
        info = server.get("/object_info")
        ours = sorted(t for t, d in info.items() if PACK_LINK in d.get("python_module", ""))
        templates = server.get("/api/workflow_templates")
        pack = drive(server.url, WORKFLOWS + controls, ours, screenshots, root / "pack")
    return {"baseline": baseline, "pack": pack, "info": info, "ours": ours, "templates": templates, "screenshots": screenshots}


SWAPPED = "noisear_sdxl_832x1216"  # its latent is not square, so swapping width and height changes both


def broken_copies(folder: Path) -> list[Path]:
    """Two copies the checks must catch: one with a node type nobody has, one with width and height swapped."""
    folder.mkdir()
    missing = json.loads((WORKFLOW_DIR / "noisear_sdxl_custom_sampler.json").read_text())
    missing["nodes"][0]["type"] = "NoiseARNoSuchNode"
    swapped = json.loads((WORKFLOW_DIR / f"{SWAPPED}.json").read_text())
    latent = next(node for node in swapped["nodes"] if node["type"] == "EmptyLatentImage")
    latent["widgets_values"][:2] = latent["widgets_values"][1::-1]
    paths = [folder / "control_missing_node.json", folder / f"control_{SWAPPED}.json"]
    for path, workflow in zip(paths, (missing, swapped)):
        path.write_text(json.dumps(workflow))
    return paths


def intended() -> dict[str, dict[int, dict[str, object]]]:
    """{workflow name: {node id: {input name: value}}} from workflows/make_workflows.py."""
    sys.path.insert(0, str(WORKFLOW_DIR))
    try:
        generator = importlib.import_module("make_workflows")
    finally:
        sys.path.remove(str(WORKFLOW_DIR))
    return {graph.name: generator.intended_widgets(graph) for graph in generator.graphs()}


def same(shown: object, wanted: object) -> bool:
    if isinstance(wanted, float) or isinstance(shown, float):
        return isinstance(shown, (int, float)) and math.isclose(shown, wanted, rel_tol=1e-9, abs_tol=1e-9)
    return shown == wanted


def plain(markdown: str) -> str:
    """A description as the search preview renders it (markdown code marks dropped)."""
    return markdown.replace("`", "").strip()


def normalised(error: dict) -> str:
    """An error's text and the path of its source, without the port (each ComfyUI runs on its own)."""
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1", f"{error['text']} @ {urlparse(error['url']).path}")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_without_a_missing_node_dialog(frontend, path):
    loaded = frontend["pack"]["workflows"][path.stem]
    assert not loaded["missing"], f"{path.name}: node types the UI does not know: {loaded['missing']}"
    assert not loaded["dialogs"], f"{path.name}: a dialog opened on loading:\n" + "\n".join(loaded["dialogs"])
    assert len(loaded["nodes"]) == len(json.loads(path.read_text())["nodes"])
    assert (frontend["screenshots"] / f"{path.stem}.png").stat().st_size > 10_000


def widget_problems(frontend: dict, name: str, wanted: dict[int, dict[str, object]]) -> list[str]:
    """Nodes of loaded workflow ``name`` whose widget inputs, by name, differ from ``wanted``."""
    problems = []
    for node in frontend["pack"]["workflows"][name]["nodes"]:
        definition = frontend["info"].get(node["type"])
        shown = dict(node["widgets"])
        if definition is not None:  # compare inputs only, not display widgets such as PreviewAny's text
            inputs = {
                *definition["input"].get("required", {}),
                *definition["input"].get("optional", {}),
                "control_after_generate",
            }
            shown = {key: value for key, value in shown.items() if key in inputs}
        expected = wanted[node["id"]]
        if set(shown) != set(expected) or not all(same(shown[key], expected[key]) for key in expected):
            problems.append(f"node {node['id']} {node['type']}: UI shows {shown}, generator intended {expected}")
    return problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_widget_shows_the_value_the_generator_intended(frontend, path):
    wanted = intended().get(path.stem)
    assert wanted is not None, f"{path.name} is not made by workflows/make_workflows.py"
    problems = widget_problems(frontend, path.stem, wanted)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_the_checks_catch_a_missing_node_and_swapped_widget_values(frontend):
    missing = frontend["pack"]["workflows"]["control_missing_node"]
    assert missing["missing"] == ["NoiseARNoSuchNode"]
    assert any("NoiseARNoSuchNode" in dialog for dialog in missing["dialogs"])
    problems = widget_problems(frontend, f"control_{SWAPPED}", intended()[SWAPPED])
    assert len(problems) == 1 and "EmptyLatentImage" in problems[0]


def test_the_pack_adds_no_console_errors(frontend):
    known = {normalised(error) for error in frontend["baseline"]["errors"]}
    # requests to other hosts are the frontend's own (e.g. it looks missing node types up in the registry; no
    # network here) and the pack ships no web code
    local = [error for error in frontend["pack"]["errors"] if urlparse(error["url"]).hostname in (None, "127.0.0.1")]
    ours = [error for error in local if normalised(error) not in known or "noisear" in json.dumps(error).lower()]
    assert not ours, "console errors with the pack that a ComfyUI without it does not log:\n" + "\n".join(
        normalised(error)[:400] for error in ours
    )


def test_every_node_is_found_by_search_with_its_description_and_tooltips(frontend):
    assert len(frontend["ours"]) >= 7
    for node_type in frontend["ours"]:
        definition = frontend["pack"]["definitions"][node_type]
        assert definition, f"{node_type} is not registered in the UI"
        found = frontend["pack"]["search"][node_type]
        assert found["options"] and found["options"][0].startswith(definition["display_name"]), (node_type, found)
        assert definition["description"] and found["description"] == plain(definition["description"]), node_type
        inputs = {**definition["input"].get("required", {}), **definition["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in inputs.values() if len(spec) > 1), node_type
        assert len(definition["output_tooltips"]) == len(definition["output"]) and all(definition["output_tooltips"])


def test_the_workflows_are_listed_under_templates(frontend):
    assert sorted(frontend["templates"][PACK_LINK]) == sorted(p.stem for p in WORKFLOWS)
