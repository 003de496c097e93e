#!/usr/bin/env bash
# The GPU check: on a CUDA machine with only this checkout (no install needed), build the
# kernels, run the CUDA tests with every op's default strategy, then once per set of
# forced strategies (so that every CUDA strategy of csrc/cuda/strategy.h runs the pooling
# and fused tests wherever it applies), then a per-kernel profile and the GPU benchmarks.
# Ends with a table of which strategies passed, and the commit it checked.
#   bash benchmarks/gpu_check.sh            (logs also go to $OUT when it is set)
#   ONLY=verify bash benchmarks/gpu_check.sh   (tests only, default and forced strategies:
#                                               the form that fits one 9-minute device call)
#   ONLY=kernels BENCH_ARGS="--min-run-time 0.2" bash benchmarks/gpu_check.sh
#   SANITIZE=1 ...: also compute-sanitizer on small pooling calls (benchmarks/sanitize_suppix.py)
# A strategy is the default of an op only once a run of this script passed it on a GPU
# (docs/build.md names that commit).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SNNSPX_CACHE_DIR="${SNNSPX_CACHE_DIR:-/tmp/snnspx-cache}"
export MAX_JOBS="${MAX_JOBS:-16}"
# The check is of the compiled CUDA kernels: make them the default for CUDA tensors, as a pass
# will (snnspx/_backend.py, CUDA_KERNELS_VERIFIED).
export SNNSPX_CUDA_DEFAULT=cuda
out="${OUT:-/tmp}"
log="$out/gpu_check.log"
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

# ONLY=all (default): every test (the CUDA ones run here), the forced-strategy passes, the
# profile and every benchmark. ONLY=kernels: the pooling and fused tests, the forced passes,
# profile and pooling/fused benchmarks. ONLY=verify: the CUDA tests of the pooling, fused,
# SRM-extremes, compile, layer and window-pooling files and the forced passes, nothing else.
only="${ONLY:-all}"
case "$only" in
  all) tests="tests" ;;
  kernels) tests="tests/test_suppix_*.py tests/test_fused.py tests/test_fused_kernels.py" ;;
  verify) tests="-m cuda tests/test_suppix_*.py tests/test_fused.py tests/test_fused_kernels.py tests/test_srm.py tests/test_srm_extremes.py tests/test_compile.py tests/test_layers.py tests/test_layer_modules.py tests/test_pool2d.py tests/test_surrogate.py tests/test_srm_state.py tests/test_srm_variants.py tests/test_neuron_modes.py tests/test_layer_options.py" ;;
  *) echo "ONLY must be all, kernels or verify, got $only" >&2; exit 2 ;;
esac
sanitizer=""
if [ "${SANITIZE:-0}" = 1 ]; then
  sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
fi

# The forced passes: each names one strategy per op (op=strategy pairs, tests/conftest.py),
# so four passes cover every CUDA strategy. Pass 1 forces the kernels that were the defaults
# before the current ones, pass 2 the current defaults wherever they apply (also on inputs
# where "" would pick another), passes 3 and 4 the opt-in strategies that have not yet
# passed on a GPU.
passes=(
  "suppix_pool=sorted,suppix_pool_backward=one_pixel,suppix_unpool=one_pixel,srm_suppix_pool=atomic,srm_suppix_pool_fwd=atomic,srm_suppix_pool_bwd=per_spike"
  "suppix_pool=nosort,suppix_pool_backward=tiled,suppix_unpool=tiled,srm_suppix_pool=plane,srm_suppix_pool_fwd=plane,srm_suppix_pool_bwd=batched"
  "suppix_pool=nosort_quad,suppix_pool_backward=tiled_reuse,suppix_unpool=tiled_reuse,srm_suppix_pool=quad"
  "suppix_pool=max_key"
)

{
step "machine and commit"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -c . || true)
echo "commit $commit${dirty:+ ($dirty tracked files changed since)}"

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
step "tests with the default strategies ($tests; the CUDA ones run here)"
python3 -m pytest -q -p no:cacheprovider -p no:logging $xdist ${TEST_ARGS:-$tests} 2>&1 | tail -n 60
default_rc=${PIPESTATUS[0]}
[ "$default_rc" = 0 ] || status=1

strategy_log="$out/gpu_check_strategies.txt"
: > "$strategy_log"
results=()
for spec in "${passes[@]}"; do
  step "CUDA pooling and fused tests, forcing $spec"
  pass_log="$out/gpu_check_pass.txt"
  : > "$pass_log"
  SNNSPX_TEST_STRATEGY="$spec" SNNSPX_TEST_STRATEGY_LOG="$pass_log" \
    python3 -m pytest -q -p no:cacheprovider -p no:logging $xdist -m cuda -k "not opcheck and not compile" \
    tests/test_suppix_*.py tests/test_fused.py tests/test_fused_kernels.py 2>&1 | tail -n 30
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || status=1
  # One line per op and strategy: the forced calls of all workers, and the pass's verdict.
  while read -r op name calls; do
    verdict=$([ "$rc" = 0 ] && echo passed || echo FAILED)
    [ "$calls" -gt 0 ] || verdict="never applied"
    results+=("$(printf '%-22s %-12s %8s  %s' "$op" "$name" "$calls" "$verdict")")
  done < <(awk '{n[$1" "$2] += $3} END {for (k in n) print k, n[k]}' "$pass_log" | sort)
  cat "$pass_log" >> "$strategy_log"
done
# SANITIZE=1: compute-sanitizer's memcheck, racecheck and synccheck on small pooling calls
# (each loads torch under the sanitizer, which is slow, so off by default). PyTorch's caching
# allocator is off, so memcheck sees reads past a tensor inside a cached block.
if [ -n "$sanitizer" ]; then
  if [ -x "$sanitizer" ]; then
    for tool in memcheck racecheck synccheck; do
      step "compute-sanitizer --tool $tool on small pooling calls"
      san_log="$out/sanitize_$tool.log"
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

if [ "$only" != verify ]; then
  step "per-kernel profile (each strategy of the pooling and fused ops)"
  timeout 180 python3 benchmarks/profile_gpu.py || status=1

  step "benchmarks: pooling and fused"
  for b in benchmarks/bench_fused.py benchmarks/bench_suppix.py; do
    timeout 240 python3 "$b" --device cuda ${BENCH_ARGS:-} || status=1
  done
fi

if [ "$only" = all ]; then
  step "benchmarks: SRM and layers"
  for b in benchmarks/bench_srm.py benchmarks/bench_layers.py; do
    timeout 240 python3 "$b" --device cuda ${BENCH_ARGS:-} || status=1
  done

  step "do C++ exceptions from JIT-built extensions reach Python here?"
  timeout 240 python3 benchmarks/diag_extension_exceptions.py || status=1
fi

step "strategies on $(python3 -c 'import torch; print(torch.cuda.get_device_name())' 2>/dev/null), commit $commit"
echo "default strategies (every test): $([ "$default_rc" = 0 ] && echo passed || echo FAILED)"
printf '%-22s %-12s %8s  %s\n' op strategy calls verdict
printf '%s\n' "${results[@]}"
step "done, status $status"
exit $status  # the block runs in a subshell (it feeds tee): its status is the script's
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
