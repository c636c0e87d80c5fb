#!/usr/bin/env bash
# Installs everything cryospire needs into .venv at the repository root:
# the system libraries Qt and napari need (when missing), a CPU build of torch, and the project.
# Safe to run again: it only installs what is missing.
#   CRYOSPIRE_QT=pyqt5|pyqt6   the Qt binding (default pyqt5, the design card's; napari's default is pyqt6)
#   CRYOSPIRE_VENV=DIR         the environment's folder (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

sys_pkgs=(xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
          libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0
          libxcb-cursor0 libdbus-1-3 libfontconfig1)
missing=()
for p in "${sys_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing system libraries: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    echo "setup: cryospire needs Python >= 3.11 (found $("$py" --version 2>&1)); set PYTHON=python3.11" >&2
    exit 1
}
qt=${CRYOSPIRE_QT:-pyqt5}
venv=${CRYOSPIRE_VENV:-.venv}
case "$qt" in pyqt5|pyqt6) ;; *) echo "setup: CRYOSPIRE_QT must be pyqt5 or pyqt6 (found $qt)" >&2; exit 1;; esac
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    # 2.13.0 is a CPU build where one is provided locally; elsewhere pip picks the platform's default.
    "$venv/bin/python" -m pip install -q torch==2.13.0 || "$venv/bin/python" -m pip install -q "torch>=2.2"
fi
"$venv/bin/python" -m pip install -q -e ".[test,$qt]"
echo "setup: ready ($venv, $qt)"
