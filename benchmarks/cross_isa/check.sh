#!/usr/bin/env bash
# The C++ kernels give the same bits on every instruction set they are built for, x86 and ARM:
# kernel_digest.cpp (fixed pseudo-random inputs, one digest per case) built with -march=native,
# capped at AVX2 and at SSE2 (the flags of snnconv.kernels.cpu.ISA_FLAGS), and, where a cross
# compiler and qemu-user are installed (Debian: g++-aarch64-linux-gnu qemu-user), for aarch64
# (NEON) and run under emulation. Also checks, in the native build, that the sparse lookups give
# the dense ones' bits. Prints each agreement; exit 1 on a mismatch.
#
#     bash benchmarks/cross_isa/check.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
csrc="$here/../../src/snnconv/kernels/csrc"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags=(-O3 -fno-trapping-math -ffp-contract=off -std=c++17 -fopenmp -I "$csrc")
build() {  # name compiler extra-flags...
  local name=$1 cxx=$2
  shift 2
  "$cxx" "${flags[@]}" "$@" "$here/kernel_digest.cpp" "$csrc"/*.cpp -o "$out/$name"
}
build native "${CXX:-g++}" -march=native
build avx2 "${CXX:-g++}" -march=native -mno-avx512f
build sse2 "${CXX:-g++}" -march=native -mno-avx512f -mno-avx2 -mno-fma -mno-avx
"$out/native" > "$out/native.txt"
echo "native ($(grep -o -m1 'avx512f' /proc/cpuinfo || echo 'no avx512')): $(wc -l < "$out/native.txt") cases"
status=0
if grep conv "$out/native.txt" | sed 's/sparse=[0-9.]* //' | sort | uniq -c | awk '$1 != 2 {bad = 1} END {exit bad}'; then
  echo "native: the sparse lookups give the dense lookups' bits in every case"
else
  echo "native: sparse and dense lookups DIFFER"
  status=1
fi
compare() {  # name file
  if cmp -s "$out/native.txt" "$2"; then
    echo "$1: same bits as native"
  else
    echo "$1: DIFFERS from native:"
    diff "$out/native.txt" "$2" | head -20
    status=1
  fi
}
for isa in avx2 sse2; do
  "$out/$isa" > "$out/$isa.txt"
  compare "$isa" "$out/$isa.txt"
done
if command -v aarch64-linux-gnu-g++ > /dev/null && command -v qemu-aarch64 > /dev/null; then
  build aarch64 aarch64-linux-gnu-g++ -march=armv8-a
  QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 "$out/aarch64" > "$out/aarch64.txt"
  compare "aarch64 (NEON, under qemu-user)" "$out/aarch64.txt"
else
  echo "aarch64: not checked (needs aarch64-linux-gnu-g++ and qemu-aarch64)"
fi
exit $status
