#!/usr/bin/env bash
# The GPU check of issue 14 (item 6), at most 8 minutes on one GPU, installing nothing:
#   (a) benchmarks/speed.py's CUDA rows at box 128 and 256, fp32 and bf16 (images/s, peak GPU MB);
#   (b) a short `cryospire train --profile paper --device cuda` on a simulated 128 px hinge set,
#       scored with `cryospire evaluate`, each with its wall time;
#   (c) tests/core/test_distributed.py with the nccl backend (CRYOSPIRE_TEST_BACKEND=nccl; NCCL
#       needs a GPU per process, so on one GPU the test reports that it skips, and why).
#
# Run from the repository root:  bash benchmarks/gpu_check.sh
# Python: .venv/bin/python when the repository has a .venv, else python3 (with torch and
# cryospire's dependencies already there: nothing is installed). Without CUDA it says so and
# exits 0. With $OUT set, the output is also written to $OUT/gpu_check.txt and the result
# files are copied into $OUT. Every step runs under `timeout`, within an overall budget of
# GPU_CHECK_BUDGET seconds (default 470); exit status 1 when a step failed or ran out of time.

set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_check.txt") 2>&1
fi

if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # cryospire from this checkout when not installed
echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), python: $PY"

if ! "$PY" -c "import torch, cryospire_core.cli.main" 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch and cryospire (install them first: bash scripts/setup.sh); nothing run"
    exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch $("$PY" -c 'import torch; print(torch.__version__)'); nothing run"
    exit 0
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {p.name}, {p.total_memory / 2**30:.0f} GiB')"

BUDGET=${GPU_CHECK_BUDGET:-470}
START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SUMMARY=()
FAILED=0

# step NAME LIMIT COMMAND...: run COMMAND under timeout (LIMIT seconds, or what is left of the
# budget), print its wall time and exit status, and record them for the summary.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < limit)); then limit=$left; fi
    if ((limit < 10)); then
        echo "== $name: not run (the ${BUDGET} s budget is spent)"
        SUMMARY+=("$(printf '%-22s %8s %s' "$name" "-" "not run: budget spent")")
        FAILED=1
        return
    fi
    echo
    echo "== $name (limit ${limit} s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local wall=$((SECONDS - t0)) status="ok"
    if ((rc == 124 || rc == 137)); then status="timed out"; elif ((rc != 0)); then status="failed (exit $rc)"; fi
    ((rc != 0)) && FAILED=1
    echo "== $name: $status, wall ${wall} s"
    SUMMARY+=("$(printf '%-22s %6d s %s' "$name" "$wall" "$status")")
}

CRYOSPIRE=("$PY" -m cryospire_core.cli.main)

# (a) Throughput and peak GPU memory of the paper-size models (stage 2: 8,192 Gaussians; stage 1:
# 2,048), batch 64, median of 5 steps; each case in its own process (CUDA start-up included).
for precision in fp32 bf16; do
    step "speed $precision" 110 "$PY" benchmarks/speed.py --devices cuda --boxes 128,256 --batch 64,64 \
        --steps 5 --no-slope --precision "$precision"
done

# (b) The paper's profile on a small 128 px set (its boxes 128/128/256 are capped at the stack's
# 128), with fewer epochs so it fits, then per-conformation scores against the ground truth.
step "simulate" 60 "${CRYOSPIRE[@]}" simulate --preset hinge --box 128 --n 4000 --snr 0.05 --seed 0 \
    --device cuda --quiet --out "$WORK/sim"
step "train (paper)" 240 "${CRYOSPIRE[@]}" train "$WORK/sim/particles.star" --out "$WORK/run" --profile paper \
    --device cuda --epochs-consensus 2 --epochs-1 3 --epochs-2 3 --quiet
step "evaluate" 90 "${CRYOSPIRE[@]}" evaluate --gt "$WORK/sim/gt" --run "$WORK/run" --out "$WORK/scores.json"

# (c) The distributed test on the nccl backend (-rs prints why it skips).
step "distributed (nccl)" 150 env CRYOSPIRE_TEST_BACKEND=nccl "$PY" -m pytest -q -rs -p no:cacheprovider \
    tests/core/test_distributed.py

if [[ -n "${OUT:-}" ]]; then
    cp benchmarks/results/speed_cuda_*.txt "$WORK/scores.json" "$OUT/" 2>/dev/null
    cp "$WORK/run/config.json" "$OUT/train_config.json" 2>/dev/null
fi
echo
echo "gpu_check summary ($((SECONDS - START)) s of ${BUDGET} s):"
printf '  %s\n' "${SUMMARY[@]}"
exit $FAILED
