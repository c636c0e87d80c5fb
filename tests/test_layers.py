"""The layers of docs/ARCHITECTURE.md, enforced: each part of cryospire imports only from its own
layer and the layers below it, and every third-party module it imports is a declared dependency."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: What each part may import (besides itself). Lowest first: a layer may use every layer listed
#: in its row, never one above it. `sim` makes test data from the physics and the file formats
#: alone, so it is a side branch over `io`.
ALLOWED: dict[str, set[str]] = {
    "base": set(),  # cryospire_core/errors.py, progress.py, ranges.py, colours.py
    "imaging": {"base"},
    "io": {"base", "imaging"},
    "models": {"base", "imaging", "io"},
    "pipeline": {"base", "imaging", "io", "models"},
    "analysis": {"base", "imaging", "io", "models", "pipeline"},
    "services": {"base", "imaging", "io", "models", "pipeline", "analysis"},
    "sim": {"base", "imaging", "io"},
    "cli": {"base", "imaging", "io", "models", "pipeline", "analysis", "services", "sim"},
    "napari": {"base", "imaging", "io", "models", "pipeline", "analysis", "services", "sim"},
}


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside cryospire (``cryospire_core.io.mrc`` -> io)."""
    parts = module.split(".")
    if parts[0] == "cryospire_napari":
        return "napari"
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "base"


def source_files() -> list[Path]:
    return sorted(p for pkg in ("cryospire_core", "cryospire_napari") for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, lazy ones inside functions included;
    a relative import is resolved against the package of ``path``."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def test_every_module_belongs_to_a_known_layer():
    for path in source_files():
        assert layer_of(module_name(path)) in ALLOWED, f"{path}: not in a layer of docs/ARCHITECTURE.md"


def test_no_import_reaches_a_higher_layer():
    bad = []
    for path in source_files():
        me = layer_of(module_name(path))
        for line, target in imports(path):
            if target.split(".")[0] not in ("cryospire_core", "cryospire_napari"):
                continue
            there = layer_of(target)
            if there != me and there not in ALLOWED[me]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {me} imports {target} ({there})")
    assert not bad, "\n".join(bad)


def test_only_the_plugin_imports_qt_or_napari():
    gui = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "vispy", "magicgui", "superqt"}
    bad = [f"{p.relative_to(ROOT)}:{line}: {t}" for p in source_files() if layer_of(module_name(p)) != "napari"
           for line, t in imports(p) if t.split(".")[0] in gui]
    assert not bad, "\n".join(bad)


#: Import names that differ from their distribution's name.
DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn", "umap": "umap-learn", "yaml": "pyyaml",
                 "imageio_ffmpeg": "imageio-ffmpeg"}


def test_every_third_party_import_is_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[; ]", d, maxsplit=1)[0].lower()
                for d in meta["dependencies"] + [d for ds in meta["optional-dependencies"].values() for d in ds]}
    used = {t.split(".")[0] for p in source_files() for _, t in imports(p)}
    third_party = used - set(sys.stdlib_module_names) - {"cryospire_core", "cryospire_napari"}
    missing = sorted(m for m in third_party if DISTRIBUTIONS.get(m, m).lower() not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


#: Declared dependencies no module imports by name, and why they are needed.
NOT_IMPORTED = {
    "npe2": "napari reads the plugin manifest napari.yaml with it",
}


def test_every_declared_dependency_is_used():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[; ]", d, maxsplit=1)[0].lower() for d in meta["dependencies"]}
    used = {DISTRIBUTIONS.get(m, m).lower() for p in source_files() for _, t in imports(p) for m in [t.split(".")[0]]}
    unused = sorted(declared - used - set(NOT_IMPORTED))
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"
