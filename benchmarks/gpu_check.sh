#!/usr/bin/env bash
# The GPU check: on a CUDA machine with only this checkout (no install needed),
# build the kernels, run the CUDA tests (also with the earlier default kernels,
# SNNSPX_LEGACY_CUDA=1), a per-kernel profile and the GPU benchmarks, print a short table.
#   bash benchmarks/gpu_check.sh            (logs also go to $OUT when it is set)
#   ONLY=kernels BENCH_ARGS="--min-run-time 0.2" bash benchmarks/gpu_check.sh
#   ONLY=verify BENCH_ARGS="--min-run-time 0.2" bash benchmarks/gpu_check.sh
#   SANITIZE=1 ...: also compute-sanitizer on small pooling calls (benchmarks/sanitize_suppix.py)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SNNSPX_CACHE_DIR="${SNNSPX_CACHE_DIR:-/tmp/snnspx-cache}"
export MAX_JOBS="${MAX_JOBS:-16}"
log="${OUT:-/tmp}/gpu_check.log"
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

# ONLY=kernels: just the pooling and fused tests, profile and benchmarks (fits a short
# device session); the default runs every test and benchmark.
# ONLY=verify: the CUDA tests of the pooling, fused, SRM-extremes, compile and layer files
# only, and no legacy pass: the shortest check of new kernels.
only="${ONLY:-all}"
case "$only" in
  all) tests="tests" ;;
  kernels) tests="tests/test_suppix.py tests/test_fused.py" ;;
  verify) tests="-m cuda tests/test_suppix.py tests/test_fused.py tests/test_srm_extremes.py tests/test_compile.py tests/test_layers.py" ;;
  *) echo "ONLY must be all, kernels or verify, got $only" >&2; exit 2 ;;
esac
sanitizer=""
if [ "${SANITIZE:-0}" = 1 ]; then
  sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
fi

{
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step "build"
python3 - <<'PY' || status=1
import time
from snnspx import _build
for kind in ("cpu", "cuda"):
    t = time.perf_counter()
    _build.load_library(kind)
    print(f"{kind} library: {time.perf_counter() - t:.1f} s")
PY

# pytest-xdist, where installed, runs tests in 8 workers and survives a crashing test.
xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
step "tests ($tests; the CUDA ones run here)"
python3 -m pytest -q -p no:cacheprovider -p no:logging $xdist ${TEST_ARGS:-$tests} 2>&1 | tail -n 60
[ "${PIPESTATUS[0]}" = 0 ] || status=1

if [ "$only" != verify ]; then
  step "tests with SNNSPX_LEGACY_CUDA=1 (the earlier default pooling, gather and fused kernels)"
  SNNSPX_LEGACY_CUDA=1 python3 -m pytest -q -p no:cacheprovider -p no:logging $xdist -m cuda \
    tests/test_suppix.py tests/test_fused.py 2>&1 | tail -n 30
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

# SANITIZE=1: compute-sanitizer's memcheck, racecheck and synccheck on small pooling calls
# (each loads torch under the sanitizer, which is slow, so off by default). PyTorch's caching
# allocator is off, so memcheck sees reads past a tensor inside a cached block.
if [ -n "$sanitizer" ]; then
  if [ -x "$sanitizer" ]; then
    for tool in memcheck racecheck synccheck; do
      step "compute-sanitizer --tool $tool on small pooling calls"
      san_log="${OUT:-/tmp}/sanitize_$tool.log"
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 "$sanitizer" --tool "$tool" --error-exitcode 1 \
        python3 benchmarks/sanitize_suppix.py > "$san_log" 2>&1
      rc=$?
      head -n 60 "$san_log"  # the first reports are the useful ones; the whole log is kept
      [ "$rc" = 0 ] || status=1
    done
  else
    echo "SANITIZE=1: no compute-sanitizer (looked on PATH and at $sanitizer)"
    status=1
  fi
fi

step "per-kernel profile (default and legacy kernels)"
timeout 180 python3 benchmarks/profile_gpu.py || status=1

step "benchmarks: pooling and fused"
for b in benchmarks/bench_fused.py benchmarks/bench_suppix.py; do
  timeout 240 python3 "$b" --device cuda ${BENCH_ARGS:-} || status=1
done

if [ "$only" = all ]; then
  step "benchmarks: SRM and layers"
  for b in benchmarks/bench_srm.py benchmarks/bench_layers.py; do
    timeout 240 python3 "$b" --device cuda ${BENCH_ARGS:-} || status=1
  done

  step "do C++ exceptions from JIT-built extensions reach Python here?"
  timeout 240 python3 benchmarks/diag_extension_exceptions.py || status=1
fi
step "done, status $status"
exit $status  # the block runs in a subshell (it feeds tee): its status is the script's
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
