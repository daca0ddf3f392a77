"""The Comfy Registry zip holds what runs in ComfyUI and nothing a registry scanner flags.

The zip is built by comfy-cli's own function, the one `comfy node pack` (and `comfy node publish`) calls:
`comfy_cli.file_utils.zip_files` takes the git-tracked files, drops those .comfyignore matches and adds the
[tool.comfy] includes, read with comfy-cli's own pyproject parser. Then every member is read:

- no tests/ or bench/ (the tests build code-carrying pickles and hostile archives on purpose);
- no pickles: no .pt/.pth/.pkl/.ckpt/.bin-like file, and no member that starts with pickle's protocol
  opcode or is a zip holding a .pkl (torch.save's format), whatever its name;
- no code that writes pickles (pickle.dump(s), torch.save, ...), no eval/exec calls, no subprocess, shell or
  pip at run time, no network (urllib.request, requests, http.client, socket, ...; transformers'
  from_pretrained only with local_files_only=True): all found through the syntax tree, import aliases resolved;
- no `eval(` text anywhere (regex scanners see `module.eval()` too: shipped code says `module.train(False)`).

The checks are shown to catch each kind of finding on small examples, and the unpacked zip must load every node.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

# comfy-cli's .comfyignore parser uses a pattern name that pathspec deprecates (theirs to change)
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]

SHIPPED_TOP_LEVEL = {
    "__init__.py",
    "nodes",
    "noisear",
    "workflows",
    "docs",
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
    "pyproject.toml",
    "requirements.txt",
}
LEFT_OUT = ("tests/", "bench/", ".github/", ".ci/", "workflows/make_workflows.py", "requirements-dev.txt")
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"}
PICKLE_WRITERS = {
    f"{module}.{name}"
    for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal")
    for name in ("dump", "dumps", "Pickler")
} | {"joblib.dump", "shelve.open", "torch.save", "torch.jit.save", "numpy.save", "numpy.savez"}
CODE_RUNNERS = {"eval", "exec", "builtins.eval", "builtins.exec"}
PROCESS_MODULES = ("subprocess", "pty", "pip", "ensurepip", "multiprocessing")
PROCESS_CALLS = ("os.system", "os.popen", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.startfile")
NETWORK_MODULES = (
    "socket",
    "ssl",
    "urllib.request",
    "urllib3",
    "http.client",
    "requests",
    "httpx",
    "aiohttp",
    "ftplib",
    "smtplib",
    "websocket",
    "websockets",
    "huggingface_hub",
)
EVAL_TEXT = re.compile(r"\beval\(")  # what a regex scanner matches; run_eval( and "eval (table" are not it

KINDS = ("test or bench files", "pickle files", "pickle writers", "eval or exec", "processes or pip", "network")


# The checks --------------------------------------------------------------------------------------------------
def is_pickle(data: bytes) -> bool:
    """Starts with pickle's PROTO opcode (protocols 2-5), or is a zip holding a .pkl (torch.save's format)."""
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                return any(name.endswith(".pkl") for name in inner.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def imported_names(tree: ast.AST) -> dict[str, str]:
    """{local name: the dotted name it was imported as}, e.g. {"d": "pickle.dumps", "t": "torch"}."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def dotted(expression: ast.AST, names: dict[str, str]) -> str | None:
    """The dotted name an expression refers to (`t.save` -> "torch.save" after `import torch as t`), or None."""
    if isinstance(expression, ast.Name):
        return names.get(expression.id, expression.id)
    if isinstance(expression, ast.Attribute):
        base = dotted(expression.value, names)
        return f"{base}.{expression.attr}" if base else None
    return None


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def python_findings(path: str, source: str) -> dict[str, list[str]]:
    """Findings in one Python file, by kind."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    tree = ast.parse(source, filename=path)
    names = imported_names(tree)
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:  # `from urllib import request` imports urllib.request
                modules = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            for kind, banned in (("processes or pip", PROCESS_MODULES), ("network", NETWORK_MODULES)):
                hits = [module for module in modules if within(module, banned)]
                if hits:
                    found[kind].append(f"{where}: imports {hits[0]}")
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func, names) or ""
        if name in PICKLE_WRITERS:
            found["pickle writers"].append(f"{where}: {name}()")
        if name in CODE_RUNNERS:
            found["eval or exec"].append(f"{where}: {name}()")
        if any(name.startswith(call) for call in PROCESS_CALLS):
            found["processes or pip"].append(f"{where}: {name}()")
        if isinstance(node.func, (ast.Attribute, ast.Name)) and name.rsplit(".", 1)[-1] == "from_pretrained":
            local_only = any(
                k.arg == "local_files_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords
            )
            if not local_only:
                found["network"].append(f"{where}: {name}() without local_files_only=True")
    return found


def scan(members: dict[str, bytes]) -> dict[str, list[str]]:
    """Every finding in a zip's members {path: bytes}, by kind (see the module docstring)."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for path, data in sorted(members.items()):
        if path.startswith(("tests/", "bench/")):
            found["test or bench files"].append(path)
        if PurePosixPath(path).suffix.lower() in PICKLE_SUFFIXES or is_pickle(data):
            found["pickle files"].append(path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        for line_number, line in enumerate(text.splitlines(), start=1):
            if EVAL_TEXT.search(line):
                found["eval or exec"].append(f"{path}:{line_number}: text 'eval(': {line.strip()[:80]}")
        if path.endswith(".py"):
            for kind, findings in python_findings(path, text).items():
                found[kind] += findings
    return found


# The zip, as comfy node pack builds it --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry_zip(tmp_path_factory) -> dict[str, bytes]:
    """{path: bytes} of every file in the zip `comfy node pack` makes of this checkout."""
    file_utils = pytest.importorskip("comfy_cli.file_utils", reason="needs comfy-cli (pip install -r requirements-dev.txt)")
    from comfy_cli.registry.config_parser import extract_node_configuration

    if not file_utils.list_git_tracked_files(ROOT):
        pytest.skip("comfy node pack zips git-tracked files: needs a git checkout with git installed")
    config = extract_node_configuration(str(ROOT / "pyproject.toml"))
    assert config is not None, "comfy-cli could not read pyproject.toml"
    path = tmp_path_factory.mktemp("registry") / "node.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # zip_files works on the current directory, as the command does
        file_utils.zip_files(path, includes=config.tool_comfy.includes)
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}


@pytest.fixture(scope="module")
def findings(registry_zip) -> dict[str, list[str]]:
    return scan(registry_zip)


def tracked(*prefixes: str) -> list[str]:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", *prefixes], capture_output=True, text=True, check=True)
    return listed.stdout.split()


def test_the_zip_holds_the_pack_and_leaves_out_tests_bench_ci_and_the_generator(registry_zip):
    assert {path.split("/")[0] for path in registry_zip} == SHIPPED_TOP_LEVEL
    left_in = [path for path in registry_zip if path.startswith(LEFT_OUT)]
    assert not left_in, f"these should stay out of the registry zip (.comfyignore): {left_in}"
    missing = [path for path in tracked("nodes", "noisear", "workflows/*.json", "workflows/*.jpg") if path not in registry_zip]
    assert not missing, f"files the pack runs on are missing from the zip (.comfyignore or includes): {missing}"
    assert {"__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt", "docs/comfyui.md"} <= set(registry_zip)
    assert b"Apache License" in registry_zip["LICENSE"] and b"Version 2.0" in registry_zip["LICENSE"]


def test_the_unpacked_zip_loads_every_node(registry_zip, tmp_path):
    """As ComfyUI loads a custom-node folder: its __init__.py as a package named after the folder, in a Python
    that sees nothing of this checkout (-I). Without ComfyUI the nodes register and only fail when run."""
    folder = tmp_path / "ComfyUI-NoiseAR"
    for path, data in registry_zip.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    script = (
        "import importlib.util, json, sys\n"
        "folder = sys.argv[1]\n"
        "spec = importlib.util.spec_from_file_location('ComfyUI-NoiseAR', folder + '/__init__.py',"
        " submodule_search_locations=[folder])\n"
        "pack = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = pack\n"
        "spec.loader.exec_module(pack)\n"
        "import noisear\n"
        "print(json.dumps({'nodes': sorted(pack.NODE_CLASS_MAPPINGS), 'noisear': noisear.__file__}))\n"
    )
    run = subprocess.run([sys.executable, "-I", "-c", script, str(folder)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    from nodes.definitions import NODE_CLASS_MAPPINGS

    assert loaded["nodes"] == sorted(NODE_CLASS_MAPPINGS)
    assert Path(loaded["noisear"]).is_relative_to(folder), "the library must come from the zip"


def test_no_test_or_bench_files(findings):
    assert not findings["test or bench files"]


def test_no_pickles(findings):
    assert not findings["pickle files"], f"pickles in the zip: {findings['pickle files']}"


def test_no_shipped_code_writes_pickles(findings):
    assert not findings["pickle writers"], "code that writes pickles:\n" + "\n".join(findings["pickle writers"])


def test_no_eval_or_exec(findings):
    assert not findings["eval or exec"], "eval/exec (write module.train(False) for module.eval()):\n" + "\n".join(
        findings["eval or exec"]
    )


def test_no_processes_or_pip_at_run_time(findings):
    assert not findings["processes or pip"], "\n".join(findings["processes or pip"])


def test_no_network(findings):
    assert not findings["network"], "\n".join(findings["network"])


# The checks find what they look for -----------------------------------------------------------------------------
def torch_style_archive() -> bytes:
    """A zip laid out as torch.save writes one (archive/data.pkl + records), whatever the file is called."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", b"\x00" * 8)
    return buffer.getvalue()


CAUGHT = [
    ("test or bench files", "tests/test_x.py", b"x = 1\n"),
    ("test or bench files", "bench/bench_x.py", b"x = 1\n"),
    ("pickle files", "weights.ckpt", b"not even a pickle"),
    ("pickle files", "docs/data.json", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."),  # pickle.dumps({})
    ("pickle files", "noisear/model.safetensors", torch_style_archive()),
    ("pickle writers", "a.py", b"import torch\ntorch.save({}, 'x')\n"),
    ("pickle writers", "a.py", b"from pickle import dumps as d\nd(1)\n"),
    ("pickle writers", "a.py", b"import pickle as p\np.Pickler(None)\n"),
    ("eval or exec", "a.py", b"import builtins\nbuiltins.exec('1')\n"),
    ("eval or exec", "a.py", b"eval ('1')\n"),
    ("eval or exec", "a.py", b"model.eval()\n"),
    ("eval or exec", "docs/a.md", b"call `model.eval()` first\n"),
    ("processes or pip", "a.py", b"import subprocess\n"),
    ("processes or pip", "a.py", b"from pip._internal import main\n"),
    ("processes or pip", "a.py", b"import os\nos.system('pip install x')\n"),
    ("network", "a.py", b"from urllib.request import urlopen\n"),
    ("network", "a.py", b"from urllib import request\n"),
    ("network", "a.py", b"import requests\n"),
    ("network", "a.py", b"import http.client\n"),
    ("network", "a.py", b"AutoModel.from_pretrained('x')\n"),
    ("network", "a.py", b"AutoModel.from_pretrained('x', local_files_only=False)\n"),
]
CLEAN = (
    b"import os\nimport urllib.parse\nimport pickletools\nfrom transformers import AutoModel\n"
    b"def run_eval(args):\n    return args\n"
    b"model = AutoModel.from_pretrained('x', local_files_only=True).train(False)\n"
    b"os.path.join('a', 'b')\nrun_eval(1)\n"
)


@pytest.mark.parametrize("kind, path, data", CAUGHT, ids=[f"{kind}: {data[:40]!r}" for kind, _, data in CAUGHT])
def test_each_check_finds_its_kind(kind, path, data):
    found = scan({path: data})
    assert len(found[kind]) == 1, found
    assert not any(findings for other, findings in found.items() if other != kind), found


def test_clean_code_and_safetensors_give_no_findings():
    safetensors_like = (8).to_bytes(8, "little") + b'{"a":{}}' + b"\x00" * 8
    found = scan({"noisear/x.py": CLEAN, "noisear/x.safetensors": safetensors_like, "docs/a.md": b"noisear eval (table)\n"})
    assert not any(found.values()), found
