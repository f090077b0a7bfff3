#!/usr/bin/env bash
# Every GPU check of lamina in one command, for a machine with an NVIDIA GPU and no network whose
# Python already has numpy, llvmlite, networkx, triton, torch (and pytest, scikit-learn, tqdm):
#
#   scripts/gpu_checks.sh [STEP...]     steps: install info gpu-tests suite example bench
#                                       (default: all, in that order)
#
# Installs lamina in place (pip --no-deps --no-build-isolation -e .), prints the GPU and versions,
# runs the GPU-marked tests, the whole test suite on the triton backend, the MLP example on the
# triton backend and the GPU benchmark (benchmarks/gpu.py). A failing step does not stop the
# others. Each step's exit code and wall time are printed in a summary at the end; the exit status
# is 1 if any step failed.
#
# Environment: OUT (default ./gpu_results, from the current directory) receives checks.log
# (everything printed), summary.txt (one line per finished step, written as it finishes) and
# gpu_bench.json; PYTHON (default python3, else python); BENCH_ARGS (extra arguments for
# benchmarks/gpu.py, e.g. --quick); SUITE_ARGS (pytest arguments for the suite step; default: 12
# worker processes where pytest-xdist is installed, as on the GPU image: one process takes long).
# shellcheck disable=SC2329  # the step functions are called through run_step "$@"
set -u
OUT=${OUT:-./gpu_results}
case $OUT in /*) ;; *) OUT="$PWD/$OUT" ;; esac  # relative to where the script was started
cd "$(dirname "$0")/.." || exit 1

PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
read -r -a bench_args <<<"${BENCH_ARGS:-}"
if [ -z "${SUITE_ARGS+set}" ] && "$PYTHON" -c "import xdist" 2>/dev/null; then
    SUITE_ARGS="-n 12"
fi
read -r -a suite_args <<<"${SUITE_ARGS:-}"
ALL_STEPS=(install info gpu-tests suite example bench)

names=()
codes=()
secs=()

# run_step NAME COMMAND...: run COMMAND, show and log its output, record exit code and wall time.
run_step() {
    local name=$1
    shift
    printf '\n=== %s: %s\n' "$name" "$*" | tee -a "$LOG"
    local start end rc
    start=$(date +%s.%N)
    "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    end=$(date +%s.%N)
    names+=("$name")
    codes+=("$rc")
    secs+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')")
    printf '%-10s exit %3d  %8s s\n' "$name" "$rc" "${secs[-1]}" >>"$SUMMARY"
}

versions() {
    "$PYTHON" - <<'EOF'
import platform

import llvmlite
import networkx
import numpy
import torch

print(f"python {platform.python_version()}, numpy {numpy.__version__}, llvmlite "
      f"{llvmlite.__version__}, networkx {networkx.__version__}")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError as e:
    print(f"triton: not importable ({e})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")

import lamina
from lamina import backends

print(f"lamina {lamina.__version__} from {lamina.__file__}; backends: {backends.available()}")
EOF
}

info() {
    nvidia-smi
    local rc=$?
    versions || rc=$?
    return "$rc"
}

# run_named STEP: one of ALL_STEPS
run_named() {
    case $1 in
        install) run_step install "$PYTHON" -m pip install --no-deps --no-build-isolation -e . ;;
        info) run_step info info ;;
        gpu-tests) run_step gpu-tests "$PYTHON" -m pytest -q -rs -m gpu ;;
        # every failure named at the end (-rf), up to 50 of them
        suite) run_step suite env LAMINA_TEST_BACKENDS=triton "$PYTHON" -m pytest -q -rf \
            --maxfail=50 "${suite_args[@]}" ;;
        example) run_step example "$PYTHON" examples/mlp_digits.py --backend triton ;;
        bench) run_step bench "$PYTHON" benchmarks/gpu.py --json "$OUT/gpu_bench.json" \
            "${bench_args[@]}" ;;
    esac
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
    case " ${ALL_STEPS[*]} " in
        *" $s "*) ;;
        *) echo "unknown step '$s'; steps: ${ALL_STEPS[*]}" >&2; exit 2 ;;
    esac
done

mkdir -p "$OUT"
LOG="$OUT/checks.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
for s in "${steps[@]}"; do
    run_named "$s"
done

failed=0
printf '\n=== summary (%s)\n' "$OUT" | tee -a "$LOG"
for i in "${!names[@]}"; do
    if [ "${codes[$i]}" -eq 0 ]; then status=ok; else status=FAILED; failed=1; fi
    printf '%-10s %-6s exit %3d  %8s s\n' "${names[$i]}" "$status" "${codes[$i]}" "${secs[$i]}" \
        | tee -a "$LOG"
done
exit "$failed"
