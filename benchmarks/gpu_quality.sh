#!/usr/bin/env bash
# Issue 18, item 5: the converged comparison on one GPU. cryospire (`--profile paper`) and
# cryoDRGN 4.3.1's default model (3x1024) train on the same simulated preset for the same
# wall-clock time (the cryospire run's), one after the other, and benchmarks/quality.py scores
# both by its per-conformation protocol: its table gives AUC, images/s, wall and peak memory.
# At most GPU_QUALITY_BUDGET seconds (default 470) overall.
#
# The GPU machine cannot reach a package index: cryoDRGN comes from wheels made here first,
#   bash benchmarks/gpu_wheels.sh        (writes .whl/, CPython 3.12; carry ".whl" to the machine)
# and is installed into a temporary folder, run only as a separate program.
# Run from the repository root:  bash benchmarks/gpu_quality.sh
#
# Knobs: GPU_QUALITY_PRESET (default assembly: 16 states, quick to score), GPU_QUALITY_N
# (default 8000 images, 64 px, SNR 0.05: sized so both tools fit the budget), GPU_QUALITY_ARCH
# (default large), GPU_QUALITY_WHEELS (default .whl). GPU_QUALITY_DEVICE=cpu with
# GPU_QUALITY_EPOCHS=1 checks the plumbing on a machine without a GPU (not a measurement).
# Python: .venv/bin/python when there is one, else python3 (torch and cryospire's dependencies
# already installed). With $OUT set, the output goes to $OUT/gpu_quality.txt and the table, its
# JSON and its plot are copied there. Exit status 1 when a step failed or ran out of time.

set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_quality.txt") 2>&1
fi

if [[ -x .venv/bin/python ]]; then PY=$PWD/.venv/bin/python; else PY=$(command -v python3); fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # cryospire from this checkout when not installed
DEVICE=${GPU_QUALITY_DEVICE:-cuda}
PRESET=${GPU_QUALITY_PRESET:-assembly}
N=${GPU_QUALITY_N:-8000}
ARCH=${GPU_QUALITY_ARCH:-large}
WHEELS=${GPU_QUALITY_WHEELS:-.whl}
BUDGET=${GPU_QUALITY_BUDGET:-470}
START=$SECONDS
echo "gpu_quality: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), python: $PY, device: $DEVICE"

if ! "$PY" -c "import torch, cryospire_core.cli.main" 2>/dev/null; then
    echo "gpu_quality: $PY cannot import torch and cryospire (install them first: bash scripts/setup.sh); nothing run"
    exit 2
fi
if [[ $DEVICE == cuda ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_quality: no CUDA device visible to torch; nothing run"
    exit 0
fi
if ! compgen -G "$WHEELS/cryodrgn-*.whl" >/dev/null; then
    echo "gpu_quality: no cryodrgn wheel in $WHEELS (make them where pip reaches the index: bash benchmarks/gpu_wheels.sh)"
    exit 2
fi
"$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}' + (f', {torch.cuda.get_device_name(0)}' if torch.cuda.is_available() else ''))"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_quality.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SITE=$WORK/cryodrgn-site
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl; then
    echo "gpu_quality: the wheels in $WHEELS did not install for $("$PY" -V) (made for another Python? PYVER=... bash benchmarks/gpu_wheels.sh)"
    exit 1
fi
# cryoDRGN's command, as its own program: this interpreter with the wheels' folder on its path.
cat >"$WORK/cryodrgn" <<EOF
#!/bin/sh
PYTHONPATH="$SITE\${PYTHONPATH:+:\$PYTHONPATH}" exec "$PY" -c 'import sys; from cryodrgn.command_line import main_commands; sys.argv[0] = "cryodrgn"; sys.exit(main_commands())' "\$@"
EOF
chmod +x "$WORK/cryodrgn"
"$WORK/cryodrgn" --version || { echo "gpu_quality: cryodrgn does not start from the wheels"; exit 1; }

RESULTS=${OUT:-$WORK}
quick=()
[[ -n "${GPU_QUALITY_EPOCHS:-}" ]] && quick=(--cryospire-epochs "$GPU_QUALITY_EPOCHS")
LEFT=$((BUDGET - (SECONDS - START)))
echo "== quality.py, $PRESET, $N images, cryospire --profile paper against cryoDRGN $ARCH (limit $LEFT s)"
timeout --kill-after=10 "$LEFT" "$PY" benchmarks/quality.py --work "$WORK/q" --presets "$PRESET" --n "$N" \
    --tools cryospire cryodrgn --cryodrgn-arch "$ARCH" --cryodrgn-exe "$WORK/cryodrgn" --profile paper \
    --device "$DEVICE" --threads "$(nproc)" --curve-points 3 "${quick[@]}" \
    --note "benchmarks/gpu_quality.sh on $DEVICE ($(hostname)), $N images: cryoDRGN trained for the cryospire run's wall time." \
    --out "$RESULTS/quality_gpu.txt"
rc=$?
if ((rc != 0)); then
    # What finished before the stop (each stage's record), so a rerun can be sized.
    echo "gpu_quality: quality.py ended with status $rc after $((SECONDS - START)) s; records of the finished stages:"
    find "$WORK/q" -name 'train*.json' -print -exec cat {} \; 2>/dev/null
fi
echo "gpu_quality: $((SECONDS - START)) s of ${BUDGET} s"
exit $((rc != 0))
