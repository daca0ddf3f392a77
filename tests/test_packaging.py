"""`pip install .` builds a wheel of the library only: `noisear` with its sub-packages and the toy demo's
checkpoints, a `noisear` command, and never a top-level `nodes` (it would shadow ComfyUI's own `nodes`).

The wheel is built from a copy of the checkout (setuptools writes build/ and *.egg-info next to the sources),
without build isolation, so no network is needed: setuptools comes from requirements-dev.txt.
"""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import noisear
from noisear.toy.checkpoints import FILES, HELD_OUT_FILE

ROOT = Path(__file__).resolve().parents[1]
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "demo-out", "out", "runs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools (pip install -r requirements-dev.txt)")
    source, dist = tmp_path_factory.mktemp("checkout") / "repo", tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--quiet",
            "-w",
            str(dist),
            str(source),
        ],
        check=True,
    )
    (path,) = dist.glob("*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_holds_only_the_noisear_package_and_its_metadata(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {"noisear", f"comfyui_noisear-{noisear.__version__}.dist-info"}


def test_every_library_package_is_in_the_wheel(wheel):
    packages = sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "noisear").rglob("__init__.py"))
    assert {"noisear", "noisear/toy", "noisear/train"} <= set(packages)
    for package in packages:
        assert f"{package}/__init__.py" in wheel.namelist()


def test_the_demo_checkpoints_are_package_data(wheel):
    for file in (*FILES.values(), HELD_OUT_FILE, "MANIFEST.md"):
        info = wheel.getinfo(f"noisear/toy/checkpoints/{file}")
        assert info.file_size == (ROOT / "noisear/toy/checkpoints" / file).stat().st_size


def test_the_noisear_command_is_python_dash_m_noisear(wheel):
    entry_points = wheel.read(f"comfyui_noisear-{noisear.__version__}.dist-info/entry_points.txt").decode()
    assert re.search(r"^noisear = noisear\.cli:main$", entry_points, re.M)
    assert "from .cli import main" in (ROOT / "noisear/__main__.py").read_text(encoding="utf-8")


def test_torch_is_a_lower_bound_at_most_and_requirements_txt_is_the_rest(wheel):
    """The version in the wheel's name is pyproject's, so the first test also checks it equals noisear.__version__."""
    metadata = wheel.read(f"comfyui_noisear-{noisear.__version__}.dist-info/METADATA").decode()
    required = [spec.replace(" ", "") for spec in re.findall(r"^Requires-Dist: ([^;\n]+)$", metadata, re.M)]
    torch = [spec for spec in required if re.match(r"torch\b", spec)]
    assert torch and all(re.fullmatch(r"torch(>=[\d.]+)?", spec) for spec in torch)
    requirements = [
        line.split("#")[0].replace(" ", "") for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(filter(None, requirements)) == sorted(set(required) - set(torch))
