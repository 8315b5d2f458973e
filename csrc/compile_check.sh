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
# Environment: PYTHON (default python3), NVCC (default nvcc), FASTGP_CHECK_MODE (auto|torch|standalone),
# FASTGP_CHECK_ARCHS (default "80 90"), MAX_JOBS (parallel compiles, default 2).
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

# One job per (source, arch); each writes its log, and any non-empty log is a failure (warnings too).
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
  if "$NVCC" "$std" "${nvcc_flags[@]}" "${includes[@]}" -gencode "arch=compute_$arch,code=sm_$arch" \
    -c "$src" -o "$out/$name.o" >"$out/$name.log" 2>&1 && [[ ! -s $out/$name.log ]]; then
    echo "  ok    sm_$arch  $(basename "$src")"
  else
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
if "$CXX" "$std" "${host_flags[@]}" "${philox_defs[@]}" "$here/tests/philox_check.cpp" -o "$out/philox_check" \
  >"$out/philox.log" 2>&1 && [[ ! -s $out/philox.log ]] && "$out/philox_check" >>"$out/philox.log" 2>&1; then
  echo "  ok    host   tests/philox_check.cpp ($(tail -n 1 "$out/philox.log"))"
else
  echo "  FAIL  host   tests/philox_check.cpp"
  sed 's/^/        /' "$out/philox.log"
  status=1
fi

# The scalar rules of the kernels (NaN slopes, 64-bit tie counts), through nvcc for the CUDA headers' path.
if "$NVCC" "$std" -Xcompiler -Wall,-Wextra,-Werror "$here/tests/rules_check.cpp" -o "$out/rules_check" \
  >"$out/rules.log" 2>&1 && [[ ! -s $out/rules.log ]] && "$out/rules_check" >>"$out/rules.log" 2>&1; then
  echo "  ok    host   tests/rules_check.cpp ($(tail -n 1 "$out/rules.log"))"
else
  echo "  FAIL  host   tests/rules_check.cpp"
  sed 's/^/        /' "$out/rules.log"
  status=1
fi

if [[ $status == 0 ]]; then echo "compile_check: passed"; else echo "compile_check: FAILED"; fi
exit $status
