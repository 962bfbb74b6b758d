"""Which implementation runs each kernel, chosen here and nowhere else.

- IF scan: "cpp" (compiled C++ on the CPU), "triton" (CUDA with triton installed), or "torch"
  (PyTorch's loop: the reference, and the fallback everywhere else).
- Spike convolution: "lookup" (the C++ table-lookup kernel, CPU) or "torch" (the module itself).

``SNNCONV_FUSED=0`` in the environment forces "torch" for both.
"""

from __future__ import annotations

import importlib.util
import os
import platform

import torch


def enabled() -> bool:
    """False when SNNCONV_FUSED=0 asks for PyTorch only."""
    return os.environ.get("SNNCONV_FUSED", "1") != "0"


def scan_backend(device: torch.device) -> str:
    """The IF scan's implementation on ``device``."""
    from snnconv.kernels import cpu

    if not enabled():
        return "torch"
    if device.type == "cpu":
        return "cpp" if cpu.kernel() is not None else "torch"
    if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "torch"


def cpu_isa() -> str:
    """The widest x86 vector instruction set the CPU has ("avx512", "avx2", "sse2"), or the
    machine name elsewhere (e.g. "aarch64")."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("sse2", "sse2")):
        if flag in flags:
            return isa
    return platform.machine() or "unknown"


def describe(device: torch.device | str = "cpu") -> dict:
    """What runs where, for results files: backends, CPU instruction set, threads."""
    device = torch.device(device)
    return {
        "scan": scan_backend(device),
        "conv": "lookup" if device.type == "cpu" and scan_backend(device) == "cpp" else "torch",
        "cpu_isa": cpu_isa(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
