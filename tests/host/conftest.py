"""A real ComfyUI, started headless on the CPU with this pack installed, for the host suite.

Skipped unless COMFYUI_PATH points to a ComfyUI checkout. Its Python is COMFYUI_PYTHON, or a venv
inside the checkout (venv/ or .venv/). The checkout is never modified: ComfyUI runs with
--base-directory in a temporary folder whose custom_nodes/ holds symlinks to this pack and to the
test-only nodes in tests/host/comfy_test_nodes; priors are found through an
extra_model_paths.yaml that registers a second "noisear" folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_NODES = Path(__file__).resolve().parent / "comfy_test_nodes"
PACK_LINK = "ComfyUI-NoiseAR"
STARTUP_SECONDS = 180
# Custom-node import summary lines and tracebacks (ComfyUI's own comfy_extras failures, e.g. a
# missing torchaudio, print "IMPORT FAILED: file.py" without the parenthesis and are not ours).
CUSTOM_NODE_FAILURE = re.compile(r"\(IMPORT FAILED\)|Cannot import .*custom_nodes")


def comfy_python(checkout: Path) -> Path | None:
    if os.environ.get("COMFYUI_PYTHON"):
        return Path(os.environ["COMFYUI_PYTHON"])
    for venv in ("venv", ".venv"):
        if (checkout / venv / "bin" / "python").exists():
            return checkout / venv / "bin" / "python"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Comfy:
    url: str
    base: Path  # --base-directory: custom_nodes, models, output, temp, user
    extra_priors: Path  # the "noisear" folder registered through extra_model_paths.yaml
    log: Path

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.load(response)

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        """POST /prompt -> (HTTP status, JSON body)."""
        request = urllib.request.Request(
            self.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue a prompt that must pass validation and wait for its history entry."""
        status, body = self.post_prompt(prompt)
        assert status == 200, f"prompt refused: {body}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{body['prompt_id']}")
            if body["prompt_id"] in history and history[body["prompt_id"]].get("status", {}).get("completed") is not None:
                entry = history[body["prompt_id"]]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {body['prompt_id']} did not finish in {timeout} s; log: {self.log}")


def comfy_checkout() -> tuple[Path, Path]:
    """(ComfyUI checkout, its Python) from COMFYUI_PATH / COMFYUI_PYTHON; skips the test when absent."""
    checkout = os.environ.get("COMFYUI_PATH")
    if not checkout:
        pytest.skip("host suite: set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its Python)")
    python = comfy_python(Path(checkout))
    if python is None or not python.exists():
        pytest.skip("host suite: set COMFYUI_PYTHON to the Python of the ComfyUI install")
    return Path(checkout), python


@contextlib.contextmanager
def running_comfy(
    root: Path, *, pack: bool = True, test_nodes: bool = True, frontend: bool = False, settings: dict | None = None
) -> Iterator[Comfy]:
    """A ComfyUI on a free port with its base directory in ``root``: with this pack (and the test-only nodes)
    in custom_nodes/ or none, and the real frontend (the installed comfyui-frontend-package) or an empty
    one. ``settings`` seed the default user's comfy.settings.json. Stopped on exit."""
    checkout, python = comfy_checkout()
    base, frontend_root, extra = root / "base", root / "frontend", root / "extra"
    for folder in (base / "custom_nodes", frontend_root, extra / "priors", base / "user" / "default"):
        folder.mkdir(parents=True)
    if pack:
        (base / "custom_nodes" / PACK_LINK).symlink_to(REPO, target_is_directory=True)
    if test_nodes:
        (base / "custom_nodes" / "noisear_test_nodes").symlink_to(TEST_NODES, target_is_directory=True)
    if settings:
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings))
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text(f"noisear_host_test:\n    base_path: {extra}\n    noisear: priors\n")
    log = root / "comfyui.log"
    port = free_port()
    command = [
        str(python),
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        "--base-directory",
        str(base),
        "--extra-model-paths-config",
        str(yaml),
    ]
    if not frontend:
        command += ["--front-end-root", str(frontend_root)]
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=checkout, stdout=log_file, stderr=subprocess.STDOUT)
    server = Comfy(f"http://127.0.0.1:{port}", base, extra / "priors", log)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode} at startup:\n{log.read_text()[-4000:]}")
            try:
                server.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer in {STARTUP_SECONDS} s:\n{log.read_text()[-4000:]}")
                time.sleep(1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Comfy]:
    with running_comfy(tmp_path_factory.mktemp("comfy")) as server:
        yield server
