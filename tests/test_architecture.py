"""The import structure is the one docs/architecture.md states: its "Import rules" table is read here and every
import of the library and the pack is held against it, and every module has a line in its "Where each idea
lives" table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
COMFYUI = ("comfy", "comfy_extras", "comfy_api", "comfy_execution", "folder_paths", "latent_preview", "server")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved; ``from x import y`` gives x.y)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return found


MODULES = {module_name(path): path for folder in ("noisear", "nodes") for path in sorted((ROOT / folder).rglob("*.py"))}


def rules() -> dict[str, tuple[str, ...]]:
    """package -> the packages it may import, from the doc's table rows ``| `pkg` | `a`, `b` |``."""
    table = DOC.split("## Import rules", 1)[1].split("\n## ", 1)[0]
    found = {}
    for row in re.findall(r"^\| `([\w.]+)` \|(.*)\|$", table, re.M):
        found[row[0]] = tuple(re.findall(r"`([\w.]+)`", row[1].split("(")[0]))
    return found


def package_of(module: str, packages: list[str]) -> str:
    """The most specific package in the table that ``module`` belongs to."""
    return max((p for p in packages if module == p or module.startswith(p + ".")), key=len)


def within(name: str, allowed: str) -> bool:
    return name == allowed or name.startswith(allowed + ".")


def test_the_doc_states_rules_for_every_package():
    assert set(rules()) == {"noisear", "noisear.train", "noisear.toy", "nodes"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_import_follows_the_rules(module):
    table = rules()
    packages = sorted(table, key=len)
    home, broken = package_of(module, packages), []
    for name in imports(MODULES[module]):
        top = name.split(".")[0]
        if top in COMFYUI:
            if module != "nodes.host":
                broken.append(f"{name} (ComfyUI is imported by nodes/host.py alone)")
            continue
        if top not in ("noisear", "nodes"):
            continue  # the standard library and third-party packages
        target = package_of(name, packages)
        modules_allowed = [entry for entry in table[home] if entry not in table]  # single modules, e.g. train.collect
        if not (target == home or target in table[home] or any(within(name, entry) for entry in modules_allowed)):
            broken.append(name)
    assert not broken, f"{module} imports {broken}, which docs/architecture.md's import rules do not allow"


def homes() -> set[str]:
    """The paths named in the doc's "Where each idea lives" table (files, or a folder that is one unit)."""
    table = DOC.split("## Where each idea lives", 1)[1].split("\n## ", 1)[0]
    return {path for row in re.findall(r"^\|.*\|(.*)\|$", table, re.M) for path in re.findall(r"`([\w./]+)`", row)}


@pytest.mark.parametrize("module", sorted(m for m, path in MODULES.items() if path.name != "__init__.py"))
def test_every_module_has_a_home_in_the_doc(module):
    path = MODULES[module].relative_to(ROOT).as_posix()
    named = homes()
    assert path in named or path.rsplit("/", 1)[0] + "/" in named, f"docs/architecture.md does not say what {path} holds"
