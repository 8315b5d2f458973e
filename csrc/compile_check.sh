#!/usr/bin/env bash
# Compiles every CUDA source of fastgp's extension with this machine's nvcc, for sm_80 and sm_90, and fails
# on any error or warning (nvcc -Werror all-warnings, host compiler -Wall -Wextra -Werror; third-party
# headers are -isystem). Needs no GPU.
#
#   torch mode       $PYTHON imports a CUDA build of torch: every csrc/*.cu against torch's headers and
#                    flags (C++20 for torch >= 2.14), fastgp_api.cpp through the host compiler
#                    (-fsyntax-only), and the Philox host check against at::philox_engine.
#   standalone mode  otherwise: the torch-free csrc/*.cu plus tests/standalone_check.cu, which
#                    instantiates the one torch-dependent kernel with a fixed seed, and the Philox host
#                    check on Random123's known answers.
#
# Every object is then held to what the kernels are built for, from ptxas -v and the SASS (cuobjdump -sass):
# no kernel spills registers or touches local memory (LDL/STL), and every float32 and bfloat16 instantiation
# of a streaming kernel moves its rows with 128-bit global loads (LDG.E.128), and those that write rows (the
# backwards but DRAGAN's, the interpolation forward) with 128-bit stores too (STG.E.128).
#
# Environment: PYTHON (default python3), NVCC (default nvcc), FASTGP_CHECK_MODE (auto|torch|standalone),
# FASTGP_CHECK_ARCHS (default "80 90"), MAX_JOBS (parallel compiles, default 2), CUOBJDUMP (default: on PATH,
# beside nvcc, else the copy that triton ships with $PYTHON's triton).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
NVCC=${NVCC:-nvcc}
MODE=${FASTGP_CHECK_MODE:-auto}
ARCHS=${FASTGP_CHECK_ARCHS:-"80 90"}
JOBS=${MAX_JOBS:-2}
CXX=${CXX:-g++}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "compile_check: no nvcc ($NVCC) on PATH" >&2
  exit 2
fi

find_cuobjdump() {
  local top  # the toolkit's root as nvcc itself resolves it (nvcc on PATH may be a wrapper script)
  top=$("$NVCC" --dryrun -E -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=\(.*\)$/\1/p' | head -n 1)
  for c in "${CUOBJDUMP:-}" "$(command -v cuobjdump 2>/dev/null)" "${top:+$top/bin/cuobjdump}" \
    "$("$PYTHON" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))' 2>/dev/null)"; do
    if [[ -n $c && -x $c ]]; then echo "$c"; return; fi
  done
}
CUOBJDUMP=$(find_cuobjdump)
if [[ -z $CUOBJDUMP ]]; then
  echo "compile_check: no cuobjdump (set CUOBJDUMP, or install triton for \$PYTHON)" >&2
  exit 2
fi

if [[ $MODE == auto ]]; then
  if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1; then
    MODE=torch
  else
    MODE=standalone
  fi
fi

# PyTorch's own nvcc flags (torch.utils.cpp_extension.COMMON_NVCC_FLAGS): the kernels must compile with them.
nvcc_flags=(-O3 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -Werror all-warnings
  -Xcompiler -Wall,-Wextra,-Werror)
host_flags=(-Wall -Wextra -Werror)
std=-std=c++17
includes=()
sources=()

if [[ $MODE == torch ]]; then
  # Include paths and the C++ standard come from the same code the real build uses (fastgp/_build.py).
  mapfile -t info < <("$PYTHON" - "$here/../fastgp/_build.py" <<'PY' 2>/dev/null
import importlib.util, sys, sysconfig
import torch
from torch.utils import cpp_extension
spec = importlib.util.spec_from_file_location("fastgp_build", sys.argv[1])
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)
print(build.cxx_std(torch.__version__))
for p in [*build.extra_include_dirs(), *cpp_extension.include_paths(device_type="cuda"), sysconfig.get_paths()["include"]]:
    print(p)
PY
  )
  std=${info[0]}
  for p in "${info[@]:1}"; do includes+=(-isystem "$p"); done
  sources=("$here"/*.cu)
  echo "compile_check: torch mode ($("$PYTHON" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null), $std)"
else
  for f in "$here"/*.cu; do
    grep -q '#include <ATen' "$f" || sources+=("$f")
  done
  sources+=("$here/tests/standalone_check.cu")
  echo "compile_check: standalone mode (no CUDA torch from $PYTHON), $std"
fi
echo "compile_check: $("$NVCC" --version | tail -n 1), archs: $ARCHS"

# The SASS facts above, for one object and its ptxas -v report; prints what fails.
sass_check() {
  local obj=$1 report=$2
  if grep -E 'bytes spill (stores|loads)' "$report" | grep -qv ' 0 bytes spill stores, 0 bytes spill loads'; then
    echo "register spills: $(grep -E 'bytes spill' "$report" | grep -v ' 0 bytes spill stores, 0 bytes spill loads' | head -n 1)"
  fi
  "$CUOBJDUMP" -sass "$obj" 2>/dev/null | awk '
    /Function : / { name = $NF; seen[name] = 1; next }
    /[^A-Z](LDL|STL)[. ]/ { local_mem[name]++ }
    /LDG\.E\.128/ { loads[name]++ }
    /STG\.E\.128/ { stores[name]++ }
    END {
      for (name in seen) {
        if (local_mem[name]) print "local memory in " name
        if (name !~ /^_ZN6fastgp[0-9]+(penalty|normalize|interpolate)_(fwd|bwd)_kernelI(f|13__nv_bfloat16)/) continue
        streaming++
        if (!loads[name]) print "no 128-bit load (LDG.E.128) in " name
        # Points::kInterpolate (0) of the interpolation backward writes rows; kDragan writes per-chunk sums.
        writes = name ~ /(penalty_bwd|normalize_bwd|interpolate_fwd)_kernel/ || name ~ /interpolate_bwd_kernel.*PointsE0E/
        if (writes && !stores[name])
          print "no 128-bit store (STG.E.128) in " name
      }
      if (!streaming) print "no float32 or bfloat16 streaming kernel found in the SASS"
    }'
}

# One job per (source, arch); each writes its log, and any non-empty log is a failure (warnings too; the
# ptxas -v report is kept apart and read by sass_check).
jobs_file="$out/jobs"
: >"$jobs_file"
for arch in $ARCHS; do
  for src in "${sources[@]}"; do
    printf '%s\t%s\n' "$arch" "$src" >>"$jobs_file"
  done
done
nvcc_cmd() {
  local arch=$1 src=$2 name
  name=$(basename "$src" .cu)-sm$arch
  if "$NVCC" "$std" "${nvcc_flags[@]}" "${includes[@]}" -gencode "arch=compute_$arch,code=sm_$arch" -Xptxas -v \
    -c "$src" -o "$out/$name.o" >"$out/$name.raw" 2>&1 &&
    grep -E '^ptxas info|bytes stack frame' "$out/$name.raw" >"$out/$name.ptxas" &&
    ! grep -vE '^ptxas info|bytes stack frame' "$out/$name.raw" >"$out/$name.log" &&
    sass_check "$out/$name.o" "$out/$name.ptxas" >>"$out/$name.log" && [[ ! -s $out/$name.log ]]; then
    echo "  ok    sm_$arch  $(basename "$src")  (no spills, 128-bit loads/stores in SASS)"
  else
    [[ -s $out/$name.log ]] || cp "$out/$name.raw" "$out/$name.log"
    echo "  FAIL  sm_$arch  $(basename "$src")"
    sed 's/^/        /' "$out/$name.log"
    return 1
  fi
}
status=0
pids=()
while IFS=$'\t' read -r arch src; do
  nvcc_cmd "$arch" "$src" &
  pids+=($!)
  if (( ${#pids[@]} >= JOBS )); then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done <"$jobs_file"
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

# Host-side checks: the C++ API file (torch mode) and the Philox generator.
if [[ $MODE == torch ]]; then
  if "$CXX" "$std" "${host_flags[@]}" -fsyntax-only -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H \
    "${includes[@]}" "$here/fastgp_api.cpp" >"$out/api.log" 2>&1 && [[ ! -s $out/api.log ]]; then
    echo "  ok    host   fastgp_api.cpp"
  else
    echo "  FAIL  host   fastgp_api.cpp"
    sed 's/^/        /' "$out/api.log"
    status=1
  fi
  philox_defs=(-DFASTGP_WITH_TORCH "${includes[@]}")
else
  philox_defs=()
fi
# Builds and runs one host check of tests/: $1 its name, then the compile command (its -o is added).
host_check() {
  local name=$1
  shift
  if "$@" -o "$out/$name" >"$out/$name.log" 2>&1 && [[ ! -s $out/$name.log ]] && "$out/$name" >>"$out/$name.log" 2>&1; then
    echo "  ok    host   tests/$name.cpp ($(tail -n 1 "$out/$name.log"))"
  else
    echo "  FAIL  host   tests/$name.cpp"
    sed 's/^/        /' "$out/$name.log"
    return 1
  fi
}
host_check philox_check "$CXX" "$std" "${host_flags[@]}" "${philox_defs[@]}" "$here/tests/philox_check.cpp" || status=1
# The scalar rules of the kernels (NaN slopes, 64-bit tie counts), through nvcc for the CUDA headers' path.
host_check rules_check "$NVCC" "$std" -Xcompiler -Wall,-Wextra,-Werror "$here/tests/rules_check.cpp" || status=1

if [[ $status == 0 ]]; then echo "compile_check: passed"; else echo "compile_check: FAILED"; fi
exit $status
