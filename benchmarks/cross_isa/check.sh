#!/usr/bin/env bash
# The C++ kernels give the same bits on every instruction set they are built for, x86 and ARM:
# kernel_digest.cpp (fixed pseudo-random inputs, one digest per case) built with the library's
# flags (snnconv.kernels.cpu.FLAGS, read from it with $PYTHON, default python3), as is and capped
# at AVX2 and at SSE2 (cpu.ISA_FLAGS), and, where a cross
# compiler and qemu-user are installed (Debian: g++-aarch64-linux-gnu qemu-user), for aarch64
# (NEON) and run under emulation. Also checks, in the native build, that the sparse lookups give
# the dense ones' bits and that a first step writing the counts (fresh) gives the bits of one
# adding to zeroed counts. Prints each agreement; exit 1 on a mismatch.
#
#     bash benchmarks/cross_isa/check.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
csrc="$here/../../src/snnconv/kernels/csrc"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags_of() {  # the library's compile flags for an ISA (options.KERNEL_ISAS), as a program's
  "${PYTHON:-python3}" -c "from snnconv.kernels import cpu
print(' '.join(f for f in cpu.FLAGS + cpu.OPTIONAL_FLAGS + cpu.ISA_FLAGS['$1'] if f not in ('-shared', '-fPIC')))"
}
build() {  # name compiler flags...
  local name=$1 cxx=$2
  shift 2
  "$cxx" "$@" -I "$csrc" "$here/kernel_digest.cpp" "$csrc"/*.cpp -o "$out/$name"
}
for isa in native avx2 sse2; do
  line=$(flags_of $isa)  # fails the script if snnconv does not import
  read -r -a isa_flags <<< "$line"
  build "$isa" "${CXX:-g++}" "${isa_flags[@]}"
done
"$out/native" > "$out/native.txt"
echo "native ($(grep -o -m1 'avx512f' /proc/cpuinfo || echo 'no avx512')): $(wc -l < "$out/native.txt") cases"
status=0
if grep conv "$out/native.txt" | sed 's/sparse=[0-9.]* //' | sort | uniq -c | awk '$1 != 2 {bad = 1} END {exit bad}'; then
  echo "native: the sparse lookups give the dense lookups' bits in every case"
else
  echo "native: sparse and dense lookups DIFFER"
  status=1
fi
if grep scan "$out/native.txt" | sed 's/ fresh=[01]//' | sort | uniq -c | awk '$1 != 2 {bad = 1} END {exit bad}'; then
  echo "native: a first step that writes the counts gives the bits of zeroed counts"
else
  echo "native: first steps with and without zeroed counts DIFFER"
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
  line=$(flags_of native)
  read -r -a arm_flags <<< "${line/-march=native/-march=armv8-a}"
  build aarch64 aarch64-linux-gnu-g++ "${arm_flags[@]}"
  QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 "$out/aarch64" > "$out/aarch64.txt"
  compare "aarch64 (NEON, under qemu-user)" "$out/aarch64.txt"
else
  echo "aarch64: not checked (needs aarch64-linux-gnu-g++ and qemu-aarch64)"
fi
exit $status
