#!/usr/bin/env bash
# The GPU checks of issue 21 ("performance on every machine") in one run, for the first session lent a GPU:
#   1. the machine: nvidia-smi -L, the GPU torch sees, torch, CUDA and cuDNN versions;
#   2. the numerical tests on the GPU: pytest -m on_device --device cuda (kernels, losses, the network,
#      the optimizer, a tiny graph run), a JUnit report beside the log;
#   3. python benchmarks/bench.py --quick --device cuda: synchronized step times, peak GPU memory, the pass
#      plan's timings (fp32, TF32, bf16), pastiche on the same GPU;
#   4. python benchmarks/fast.py --speed --device cuda: the stylizer's frames per second at 256² to 1024² and
#      its training step, at widths 16 and 32 (issue 20's GPU figures).
# Everything printed goes to gpu_check_DEVICE.log, bench's figures to gpu_check_DEVICE.json, the stylizer's to
# gpu_check_DEVICE_fast/speed.json and the tests' results to gpu_check_DEVICE_tests.xml, in $OUT when it is set,
# else in benchmarks/results/. Each step has a time limit: the whole run ends within 8 minutes, and a step cut
# short still leaves what it measured.
#
# The GPU machine has no internet: this script installs nothing. Build the environment first, from the
# repository root (and activate it, if it is a virtual environment; PYTHON=... picks another interpreter):
#   pip install torch==2.13.0 && pip install -e .[test,cluster]
#
#   bash benchmarks/gpu_check.sh                 # on the GPU (default --device cuda)
#   bash benchmarks/gpu_check.sh --device cpu    # a dry run of the same steps on the CPU: bench and the
#                                                # stylizer at tiny sizes; about 4-5 minutes on 2 cores
# Exit status 0 when every step passed, 1 when one failed or ran out of time, 2 for a wrong argument.
set -u -o pipefail

usage="usage: bash benchmarks/gpu_check.sh [--device cuda|cpu]"
device=cuda
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="${2:-}"; shift $(($# > 1 ? 2 : 1)) ;;
        --device=*) device="${1#--device=}"; shift ;;
        -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1'; $usage" >&2; exit 2 ;;
    esac
done
case "$device" in
    cuda | cpu) ;;
    *) echo "gpu_check.sh: --device must be cuda or cpu, not '$device'; $usage" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 1
python="${PYTHON:-python}"
results="${OUT:-benchmarks/results}"
mkdir -p "$results" || exit 1
log="$results/gpu_check_$device.log"

# Time limits per step, in seconds. On the GPU their sum with the machine's lines stays under 8 minutes. The CPU
# dry run runs its tests on one thread (OMP_NUM_THREADS, unless set): while other work shared the 2 cores, two
# torch threads waited on each other and test_optimize.py's device tests took 250 s instead of 23 s. The bench
# dry run took 188 s on an idle 2-core Intel Xeon once ours and pastiche took turns (two more runs of each size).
if [ "$device" = cuda ]; then
    tests_limit=120 bench_limit=255 bench_size=--quick tests_env=() fast_limit=75 fast_sizes=()
else
    tests_limit=240 bench_limit=360 bench_size=--dry-run tests_env=(env "OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}")
    fast_limit=150 fast_sizes=(--size 64 --batch 1 --apply-sizes 64x48)
fi

check_environment() {
    if ! "$python" -c "import torch" 2>/dev/null; then
        echo "gpu_check.sh: '$python' cannot import torch: build the environment first (the top of this script)"
        return 1
    fi
    if [ "$device" = cuda ] && ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        "$python" -c "import torch; print(f'gpu_check.sh: torch {torch.__version__} sees no CUDA device', \
'(a CPU-only build)' if torch.version.cuda is None else f'(built for CUDA {torch.version.cuda}: no GPU or driver)')"
        return 1
    fi
    if ! "$python" -c "import nst_nodes, pytest" 2>/dev/null; then
        echo "gpu_check.sh: '$python' cannot import nst_nodes or pytest: pip install -e .[test,cluster] first"
        return 1
    fi
    command -v pastiche >/dev/null || echo "gpu_check.sh: warning: no pastiche command on the PATH: bench.py skips pastiche"
}

machine() {
    echo "== machine ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    uname -srm
    echo "CPU: $(sed -n 's/^model name\s*:\s*//p' /proc/cpuinfo 2>/dev/null | head -1), $(nproc) cores"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi -L
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    else
        echo "nvidia-smi: not on the PATH"
    fi
    "$python" - <<'PYTHON'
import platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
    properties = torch.cuda.get_device_properties(index)
    print(f"cuda:{index}: {torch.cuda.get_device_name(index)}, compute capability {properties.major}.{properties.minor}, "
          f"{properties.total_memory / 2**30:.0f} GiB")
PYTHON
}

summary=()
failed=0
step() {  # step NAME LIMIT COMMAND...: runs COMMAND under a time limit, records its status and time
    local name="$1" limit="$2" started=$SECONDS status
    shift 2
    echo "== $name (at most ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@"
    status=$?
    [ $status -eq 124 ] || [ $status -eq 137 ] && name="$name (out of time)"
    summary+=("$name: exit $status, $((SECONDS - started)) s")
    [ $status -eq 0 ] || failed=1
}

main() {
    check_environment || return 1
    machine
    # Kernel and pass-plan choices of this run only: timed here, kept out of the user's cache.
    NST_KERNELS_FILE="$(mktemp -d)/kernels.json"
    export NST_KERNELS_FILE
    step "tests on $device" "$tests_limit" ${tests_env[@]+"${tests_env[@]}"} "$python" -m pytest -m on_device \
        --device "$device" -q -rs \
        -p no:cacheprovider --junitxml "$results/gpu_check_${device}_tests.xml" \
        tests/test_kernels.py tests/test_losses.py tests/test_vgg.py tests/test_optimize.py tests/test_graphs.py
    step "bench.py $bench_size --device $device" "$bench_limit" "$python" benchmarks/bench.py "$bench_size" \
        --device "$device" --output "$results/gpu_check_$device.json"
    step "fast.py --speed --device $device" "$fast_limit" "$python" benchmarks/fast.py --speed --device "$device" \
        ${fast_sizes[@]+"${fast_sizes[@]}"} --out "$results/gpu_check_${device}_fast"
    echo "== summary ($device, $SECONDS s in all)"
    printf '%s\n' "${summary[@]}"
    echo "results: $log, $results/gpu_check_$device.json, $results/gpu_check_${device}_tests.xml," \
        "$results/gpu_check_${device}_fast/speed.json"
    return $failed
}

main 2>&1 | tee "$log"
