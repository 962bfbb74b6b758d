"""The C++ kernels compute the same bits on every instruction set they are built for: x86 with
AVX-512, AVX2 and SSE2 only, and ARM (aarch64, NEON) run under qemu-user
(benchmarks/cross_isa/check.sh: one digest per case of fixed pseudo-random inputs; also sparse ==
dense lookups in the native build). The ARM part needs Debian's g++-aarch64-linux-gnu and
qemu-user, which CI installs (.ci/run sets SNNCONV_REQUIRE_CROSS=1, so there it must run)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "cross_isa" / "check.sh"
ARM_TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64")


@pytest.mark.slow
def test_every_build_gives_the_native_bits():
    have_arm = all(shutil.which(tool) for tool in ARM_TOOLS)
    if os.environ.get("SNNCONV_REQUIRE_CROSS") == "1":
        assert have_arm, "install g++-aarch64-linux-gnu and qemu-user (Debian) for the ARM check"
    env = {**os.environ, "PYTHON": sys.executable}  # reads the flags from this snnconv
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "native: the sparse lookups give the dense lookups' bits in every case" in done.stdout
    fresh = "native: a first step that writes the counts gives the bits of zeroed counts"
    assert fresh in done.stdout
    assert "avx2: same bits as native" in done.stdout
    assert "sse2: same bits as native" in done.stdout
    if not have_arm:
        pytest.skip("ARM not checked here: no aarch64 cross compiler and qemu-user (CI has them)")
    assert "aarch64 (NEON, under qemu-user): same bits as native" in done.stdout
