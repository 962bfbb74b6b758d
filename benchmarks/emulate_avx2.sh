#!/usr/bin/env bash
# Run a command as it runs on an AVX2-only x86 CPU, on a machine with AVX-512:
#
#     bash benchmarks/emulate_avx2.sh python benchmarks/sim_speed.py
#     bash benchmarks/emulate_avx2.sh snnconv demo --data-root ../shared/data
#
# Caps every kernel library the process uses at AVX2: snnconv's C++ kernels (SNNCONV_ISA, built
# with -mno-avx512f), PyTorch's ATen kernels (ATEN_CPU_CAPABILITY), oneDNN's convolutions
# (ONEDNN_MAX_CPU_ISA) and MKL's matrix products (MKL_ENABLE_INSTRUCTIONS). The benchmarks then
# print "avx2 (emulated on an avx512 CPU ...)" (snnconv.kernels.backend.isa_label).
#
# This measures the AVX2 code, not an AVX2 machine: the cores, clock and caches stay this CPU's
# (a Zen 4 runs 512-bit instructions as two 256-bit halves, so the code's width costs it little).
# Figures from it are labelled as emulated and never stand in for a real AVX2-only machine's.
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: bash benchmarks/emulate_avx2.sh COMMAND [ARGS...]" >&2
  exit 2
fi
if ! grep -qw avx2 /proc/cpuinfo; then
  echo "emulate_avx2.sh: this CPU has no AVX2" >&2
  exit 2
fi
export SNNCONV_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
exec "$@"
