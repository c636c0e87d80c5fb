"""The package layout promises: core never imports Qt or napari; napari finds the plugin from
an editable install and from a built wheel; the CLI answers --help."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kw)


def test_core_imports_no_gui_toolkit():
    code = (
        "import importlib, pkgutil, sys, cryospire_core\n"
        "for m in pkgutil.walk_packages(cryospire_core.__path__, 'cryospire_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in {'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'vispy', 'magicgui'})\n"
        "print(bad)\n"
    )
    res = run_py(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_cli_help_lists_commands():
    res = subprocess.run([sys.executable, "-m", "cryospire_core.cli.main", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("simulate", "backproject", "evaluate"):
        assert cmd in res.stdout


def test_manifest_found_from_installed_package():
    res = run_py(
        "from npe2 import PluginManifest\n"
        "m = PluginManifest.from_distribution('cryospire-napari')\n"
        "print(m.name)"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "cryospire-napari"


def test_wheel_ships_manifest_and_napari_finds_it(tmp_path):
    wheel_dir = tmp_path / "wheel"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = wheel_dir.glob("cryospire_napari-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("cryospire_napari/napari.yaml").decode()
        names = set(zf.namelist())
    assert shipped == (ROOT / "napari.yaml").read_text()
    resources = {f"cryospire_core/resources/{p.relative_to(ROOT / 'resources')}" for p in (ROOT / "resources").rglob("*")
                 if p.is_file()}
    assert resources and resources <= names, f"not in the wheel: {sorted(resources - names)}"

    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1])\n"
         "from npe2 import PluginManifest\n"
         "m = PluginManifest.from_distribution('cryospire-napari')\n"
         "from importlib.resources import files\n"
         "from cryospire_core.pipeline.profiles import profile_names\n"
         "package, icon = m.icon.split(':')\n"
         "assert files(package).joinpath(icon).is_file(), m.icon\n"
         "assert {'cpu', 'paper'} <= set(profile_names()), profile_names()\n"
         "import cryospire_napari; print(m.name, cryospire_napari.__file__)",
         str(target)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    name, location = res.stdout.split()
    assert name == "cryospire-napari"
    assert location.startswith(str(target))
