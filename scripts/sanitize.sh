#!/usr/bin/env bash
# The compiled kernels under AddressSanitizer + UndefinedBehaviorSanitizer: builds _native.c and its
# sibling modules in a private copy of the tree with the flags a normal install uses plus the sanitizers, proves the setup
# catches a planted heap overflow, then runs tests/runtime and a fuzz campaign with libasan preloaded
# (python itself is not instrumented). Fails on any sanitizer report, test failure or fuzz crash.
#
#   scripts/sanitize.sh [--quick] [FUZZ_ITERATIONS [FUZZ_WORKERS [CONVERT_SHARE]]]
#
# defaults: 20000 inputs, 2 workers, the fuzzer's own share of ONNX conversions (0 leaves them out).
# --quick (CI): of tests/runtime, only the files that reach the compiled kernels (QUICK_TESTS); the
# thousands of numpy-only op cases take most of the time under ASan and reach no C code.
#
# Run it before every change to a compiled module (dcm/runtime/cpu/_*.c, _kernel_common.h). The
# campaign's figures go to benchmarks/results/fuzz_sanitized.json. Also runs the compiled modules'
# tests (test_native, test_pointwise, test_recurrent_scan, test_upsample) on the portable
# -DDCM_NO_SIMD build.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=(tests/runtime)
if [ "${1:-}" = --quick ]; then
  shift
  tests=(tests/runtime/test_{native,pool,gemm,blas,pointwise,pointconv,recurrent_scan,upsample,layout,nhwc_kernels,conv,conv_lanes,sparse_conv,depthwise,fusion,winograd,matmul,windows,kernels,session,numerics,memory,quiet_ops,malformed_runs,hostile_shapes}.py)
fi
iterations=${1:-20000}
workers=${2:-2}
convert=()
[ -n "${3:-}" ] && convert=(--convert-share "$3")
python=${PYTHON:-python}

asan=$(gcc -print-file-name=libasan.so)
if [ "$asan" = libasan.so ] || [ ! -e "$asan" ]; then
  echo "sanitize.sh: gcc has no libasan.so (install libasan / gcc's sanitizer runtime)" >&2
  exit 2
fi
# libstdc++ preloaded too: ASan intercepts __cxa_throw only if it is there at start-up, and onnx's
# C++ code (loaded later) throws; without it the first exception ends in an ASan CHECK failure.
preload="$asan $(gcc -print-file-name=libstdc++.so)"

work=$(mktemp -d "${TMPDIR:-/tmp}/dcm-sanitize.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/reports"
# A copy, so the sanitized extension never replaces the one the working tree imports.
cp -r dcm tests benchmarks setup.py pyproject.toml "$work/"
rm -f "$work"/dcm/runtime/cpu/_*.so
rm -rf "$work/benchmarks/results"  # earlier runs' outputs: only this run's may come back
find "$work" -name __pycache__ -prune -exec rm -rf {} +

# The normal install's flags (sysconfig CFLAGS, setup.py's -O3) plus the sanitizers. -fno-wrapv:
# Python builds with -fwrapv, under which UBSan does not check signed overflow at all; the kernels
# must never rely on wrapping (size_product refuses it), so an overflow is a finding.
sanitizers="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
build() { # extra CFLAGS
  (cd "$work" && rm -rf build && CFLAGS="$sanitizers -fno-wrapv $1" LDFLAGS="-fsanitize=address,undefined" \
    "$python" setup.py -q build_ext --inplace >"$work/build.log" 2>&1) || { cat "$work/build.log" >&2; exit 1; }
  ls "$work"/dcm/runtime/cpu/_{native,pointwise,recurrent,upsample,pool,pointconv,gemm,layout,nhwc}*.so >/dev/null
}

failed=0
# UBSan writes to stderr whatever log_path says when ASan's runtime is preloaded: its reports are
# found there ("runtime error:"), ASan's in the log files.
run_sanitized() { # command...: runs it preloaded; a failure or any report it left fails the script at the end
  local status=0
  (cd "$work" && LD_PRELOAD="$preload" \
    ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=4096:log_path=$work/reports/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/reports/ubsan" \
    PYTHONPATH="$work" "$@") 2> >(tee "$work/stderr.log" >&2) || status=$?
  grep -h "runtime error:" "$work/stderr.log" >"$work/reports/ubsan-stderr" || rm -f "$work/reports/ubsan-stderr"
  if compgen -G "$work/reports/*" >/dev/null; then
    # An allocation over max_allocation_size_mb is refused (numpy: MemoryError, which the runtime
    # reports as a DcmError) with only this warning: a note, not a memory error.
    if grep -hv "WARNING: AddressSanitizer failed to allocate" "$work"/reports/* | grep -q .; then
      echo "sanitize.sh: SANITIZER REPORT from: $*" >&2
      failed=1
    else
      echo "sanitize.sh: note: allocations over 4 GiB refused during: $*" >&2
    fi
    cat "$work"/reports/* >&2
    rm -f "$work"/reports/*
  fi
  if [ "$status" -ne 0 ]; then
    echo "sanitize.sh: FAILED ($status): $*" >&2
    failed=1
  fi
  return 0
}

start=$SECONDS
# 1. The setup catches planted bugs, built the same way: a one-float heap overflow read (ASan) and a
#    wrapping size product like the one _native.c once had (UBSan).
mkdir -p "$work/canary"
cat >"$work/canary/canary.c" <<'EOF'
#include <Python.h>
#include <stdlib.h>
static PyObject *overflow(PyObject *self, PyObject *arg)
{
    volatile float *p = malloc(4 * sizeof(float));
    float v = p[4];
    free((void *)p);
    return PyFloat_FromDouble(v);
}
static PyObject *wrap(PyObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    return PyLong_FromSsize_t(n * 16);
}
static PyMethodDef methods[] = {{"overflow", overflow, METH_NOARGS, NULL}, {"wrap", wrap, METH_O, NULL}, {NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "canary", NULL, -1, methods};
PyMODINIT_FUNC PyInit_canary(void) { return PyModule_Create(&module); }
EOF
inc=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
suffix=$("$python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
gcc -shared -fPIC $sanitizers -fno-wrapv -I"$inc" "$work/canary/canary.c" -o "$work/canary/canary$suffix"
expect_report() { # call, what the report must say
  rm -f "$work"/canary/report*
  if (cd "$work/canary" && LD_PRELOAD="$preload" ASAN_OPTIONS="detect_leaks=0:log_path=$work/canary/report" \
      UBSAN_OPTIONS="halt_on_error=1:log_path=$work/canary/report" "$python" -c "import canary; canary.$1") \
      2>"$work/canary/report-stderr" || ! grep -q "$2" "$work"/canary/report* 2>/dev/null; then
    echo "sanitize.sh: the planted bug canary.$1 was not reported ($2): the sanitizer setup does not work" >&2
    exit 1
  fi
}
expect_report "overflow()" heap-buffer-overflow
expect_report "wrap(2**62 + 1)" "signed integer overflow"
echo "canaries: planted heap-buffer-overflow and signed overflow reported ($((SECONDS - start)) s)"

# 2. The SIMD build: the runtime tests, then a fuzz campaign.
build ""
echo "built with $sanitizers -fno-wrapv ($((SECONDS - start)) s)"
run_sanitized "$python" -m pytest -q -p no:cacheprovider "${tests[@]}"
echo "${#tests[@]} test path(s) done ($((SECONDS - start)) s)"
run_sanitized "$python" -m benchmarks.fuzz --iterations "$iterations" --workers "$workers" "${convert[@]}" --name fuzz_sanitized
mkdir -p benchmarks/results
cp "$work/benchmarks/results/fuzz_sanitized.json" benchmarks/results/ 2>/dev/null || true
if [ -d "$work/benchmarks/results/crashes" ]; then  # the inputs of any crash, to reproduce
  rm -rf benchmarks/results/crashes-sanitized
  cp -r "$work/benchmarks/results/crashes" benchmarks/results/crashes-sanitized
  echo "crash inputs: benchmarks/results/crashes-sanitized/" >&2
fi
echo "fuzz: $iterations inputs done ($((SECONDS - start)) s)"

# 3. The portable build (-DDCM_NO_SIMD): the C paths other CPUs run.
build "-DDCM_NO_SIMD"
run_sanitized "$python" -m pytest -q -p no:cacheprovider tests/runtime/test_native.py tests/runtime/test_pointwise.py \
  tests/runtime/test_recurrent_scan.py tests/runtime/test_upsample.py tests/runtime/test_pointconv.py tests/runtime/test_layout.py \
  tests/runtime/test_nhwc_kernels.py
echo "portable build: test_native.py, test_pointwise.py, test_recurrent_scan.py, test_upsample.py done ($((SECONDS - start)) s)"
if [ "$failed" -ne 0 ]; then
  echo "sanitize.sh: FAILED (see above) after $((SECONDS - start)) s" >&2
  exit 1
fi
echo "sanitize.sh: passed, no sanitizer report ($((SECONDS - start)) s in all)"
