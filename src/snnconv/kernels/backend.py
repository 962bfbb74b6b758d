"""Which implementation runs each kernel, chosen here and nowhere else.

- IF scan: "cpp" (the compiled C++ kernels, CPU), "triton" (CUDA with triton installed), or
  "torch" (PyTorch's loop: the reference, and the fallback everywhere else).
- Spike convolution: "lookup" (the C++ table-lookup kernel, CPU) or "torch" (the module itself).

``SNNCONV_FUSED=0`` in the environment forces "torch" for both (read at each decision);
``SNNCONV_ISA=avx2`` (or sse2; options.KERNEL_ISAS) builds the C++ kernels for at most that x86
instruction set, e.g. to measure on an AVX-512 machine what an AVX2-only one runs
(benchmarks/emulate_avx2.sh also caps PyTorch's own kernels). The C++
kernels are loaded once per process, on first use (``cpp``); if that fails (no compiler, a
failed build, a library that disagrees with cpu.py's ABI) one warning says why and PyTorch runs.
The simulator asks through cpu.kernel, cpu.scan_available and lookup_conv.applies, which ask here.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import threading
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from snnconv import options
from snnconv.exceptions import KernelError
from snnconv.kernels import build, cpu

ScanBackend = Literal["cpp", "triton", "torch"]
ConvBackend = Literal["lookup", "torch"]


def requested_isa() -> str:
    """SNNCONV_ISA in the environment, checked (options.KERNEL_ISAS); "native" when unset."""
    value = os.environ.get("SNNCONV_ISA", "native")
    return options.choice("SNNCONV_ISA (environment)", value, options.KERNEL_ISAS)


def enabled() -> bool:
    """False when SNNCONV_FUSED=0 asks for PyTorch only."""
    return os.environ.get("SNNCONV_FUSED", "1") != "0"


@dataclass
class CppState:
    """This process's C++ kernels: loaded, or the reason they could not be (not retried)."""

    kernels: cpu.Kernels | None = None
    error: str | None = None


_cpp = CppState()
_loading = threading.Lock()


def cpp() -> cpu.Kernels | None:
    """The compiled CPU kernels, loaded (built if needed) on first use; None when SNNCONV_FUSED=0
    or when they cannot be had (warned once, with the reason)."""
    state = _cpp
    if not enabled():
        return None
    if state.kernels is None and state.error is None:
        with _loading:
            if state.kernels is None and state.error is None:
                try:
                    state.kernels = cpu.load(requested_isa())
                except (KernelError, OSError, subprocess.SubprocessError) as err:
                    state.error = f"{type(err).__name__}: {str(err)[:2000]}"
                    warnings.warn(
                        f"snnconv: compiled kernels unavailable ({state.error}); "
                        "using PyTorch only",
                        stacklevel=2,
                    )
    return state.kernels


def scan_backend(device: torch.device) -> ScanBackend:
    """The IF scan's implementation on ``device``."""
    if not enabled():
        return "torch"
    if device.type == "cpu":
        return "cpp" if cpp() is not None else "torch"
    if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "torch"


def conv_backend(device: torch.device) -> ConvBackend:
    """The implementation of a convolution that reads spikes, on ``device`` (where
    lookup_conv.applies also admits the module and its input)."""
    return "lookup" if device.type == "cpu" and scan_backend(device) == "cpp" else "torch"


def cpu_isa() -> str:
    """The widest x86 vector instruction set the CPU has ("avx512", "avx2", "sse2"), or the
    machine name elsewhere (e.g. "aarch64")."""
    flags = build.cpu_features().split()
    for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("sse2", "sse2")):
        if flag in flags:
            return isa
    return platform.machine() or "unknown"


_ISA_ORDER = ("sse2", "avx2", "avx512")


def kernel_isa() -> str:
    """The instruction set the C++ kernels are built for: the CPU's (cpu_isa), or the lower
    SNNCONV_ISA asks for."""
    have, cap = cpu_isa(), requested_isa()
    if cap == "native" or have not in _ISA_ORDER:
        return have
    return min(have, cap, key=_ISA_ORDER.index)


def torch_isa() -> str:
    """PyTorch's own CPU kernels' instruction set ("avx512", "avx2", "default", ...): capped by
    ATEN_CPU_CAPABILITY."""
    return torch.backends.cpu.get_cpu_capability().lower()


def isa_label() -> str:
    """The instruction set a benchmark ran with, for its output: the CPU's ("avx512"), or e.g.
    "avx2 (emulated on an avx512 CPU; PyTorch: avx2)" when SNNCONV_ISA asks for less (or
    "avx512 (PyTorch capped at avx2)" when only ATEN_CPU_CAPABILITY does). Emulation
    runs the other instruction set's code on this CPU's cores and caches: it measures the code, not
    the other machine."""
    have, used, theirs = cpu_isa(), kernel_isa(), torch_isa()
    if used != have:
        return f"{used} (emulated on an {have} CPU; PyTorch: {theirs})"
    if theirs in _ISA_ORDER and theirs != have:  # ATEN_CPU_CAPABILITY alone
        return f"{have} (PyTorch capped at {theirs})"
    return have


def describe(device: torch.device | str = "cpu") -> dict:
    """What runs where, for results files: backends, CPU instruction set, threads."""
    device = torch.device(device)
    return {
        "scan": scan_backend(device),
        "conv": conv_backend(device),
        "cpu_isa": cpu_isa(),
        "kernel_isa": kernel_isa(),
        "torch_isa": torch_isa(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
