#!/usr/bin/env bash
# The plugin's tests under PyQt6 (napari's default binding), in a second environment with no PyQt5
# in it, so nothing can silently fall back to the design card's binding. The main suite
# (README, .ci/run) runs everything under PyQt5 first.
set -euo pipefail
cd "$(dirname "$0")/.."
CRYOSPIRE_QT=pyqt6 CRYOSPIRE_VENV=.venv-pyqt6 bash scripts/setup.sh
.venv-pyqt6/bin/python -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("PyQt5") is None else "PyQt5 is installed in .venv-pyqt6")'
QT_API=pyqt6 xvfb-run -a .venv-pyqt6/bin/python -m pytest -q tests/napari tests/test_packaging.py
