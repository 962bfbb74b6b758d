"""The compiled CPU kernels (csrc/): their C ABI mirrored once in ctypes, one typed wrapper per
entry point, and the calls the simulator makes.

- The IF scan, per step k: v += I[k]; s = v >= theta[k]; v -= s * V_th; out[k] = s * V_th;
  count += s, with I = current (+ addend, rounded first, as the separate add would round it);
  for signed neurons s also takes -1 (neuron.py states when) and ``events`` += |s|.
  The same float operations in the same order as ``IFNeurons.scan``'s PyTorch loop
  (tests/test_fused.py compares them bit for bit), but in one pass: each thread takes a block of
  neurons and runs all steps of the chunk on it while its membranes sit in cache, instead of
  sweeping the whole layer's memory three times per step.
- The lookup convolution of spike maps (lookup_conv.py states it), alone or with the IF update
  of the layer that reads it, image after image.

The sources are compiled on first use with the system's C++ compiler (about 2 s) and cached
(build.py: where, and what is checked before a library is loaded). They are plain C++ called
through ctypes on the tensors' data pointers, so building needs no torch headers. They
parallelise with OpenMP, which resolves to the libgomp PyTorch has loaded: the kernels run on
PyTorch's own thread team instead of a second pool competing with its spinning workers
(measured: the scan took 0.55 s with std::thread, 0.33 s with OpenMP, in
benchmarks/sim_profile.py --T 16 --channels-last).

The ABI is declared once on each side: the structs and signatures in csrc/snnconv_kernels.h,
their ctypes mirrors and ``SIGNATURES`` here. ``load`` compares the library's own answers
(snnconv_abi, snnconv_sizeof, snnconv_offsetof) with the mirrors and refuses a library that
disagrees; the wrappers check every tensor's dtype, device, size and density before passing its
pointer, so a caller's mistake is an error, never a write out of bounds.

Which backend runs (C++, Triton, PyTorch) is decided in backend.py; ``kernel``,
``scan_available`` and ``if_scan`` below ask it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch

from snnconv import options
from snnconv.exceptions import KernelError, SimulationError
from snnconv.kernels import build

CSRC = Path(__file__).with_name("csrc")
FLAGS = (
    "-O3",
    "-march=native",
    "-fno-trapping-math",
    "-ffp-contract=off",
    "-std=c++17",
    "-shared",
    "-fPIC",
)
OPTIONAL_FLAGS = ("-fopenmp",)  # without OpenMP support in the compiler: built serial
# What each options.KERNEL_ISAS value adds to FLAGS (x86 only): the instruction sets it takes away
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "native": (),
    "avx2": ("-mno-avx512f",),  # and every AVX-512 extension, which needs it
    "sse2": ("-mno-avx512f", "-mno-avx2", "-mno-fma", "-mno-avx"),
}
ABI = 4  # SNNCONV_ABI in csrc/snnconv_kernels.h

_i32, _i64, _ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p


class ConvGeometry(ctypes.Structure):
    """snnconv_conv_geometry: one lookup convolution's shapes and its table's plan."""

    _fields_ = [
        ("n", _i64),
        *[(f, _i32) for f in "c h w cout kh kw sh sw ph pw ho wo gb nv gr negative".split()],
        ("sparse_below", ctypes.c_float),
    ]


class Fire(ctypes.Structure):
    """snnconv_fire: the IF layer updated in the same pass as the convolution."""

    _fields_ = [
        ("addend", _ptr),
        ("v", _ptr),
        ("count", _ptr),
        ("theta", _ptr),
        ("vth", ctypes.c_float),
        ("batch", _i64),
        ("steps", _i64),
        ("events", _ptr),
    ]


MIRRORS: dict[str, type[ctypes.Structure]] = {"conv_geometry": ConvGeometry, "fire": Fire}


def _scan_signature(real):
    # cur, constant, add, v, theta, vth, out, count, events, steps, n, threads
    return None, [_ptr, _i32, _ptr, _ptr, _ptr, real, _ptr, _ptr, _ptr, _i64, _i64, _i32]


# Each entry point's (return type, argument types): the one place they are declared.
SIGNATURES = {
    "snnconv_abi": (_i32, []),
    "snnconv_sizeof": (_i64, [ctypes.c_char_p, ctypes.c_char_p]),
    "snnconv_offsetof": (_i64, [ctypes.c_char_p, ctypes.c_char_p]),
    "snnconv_if_scan_f32": _scan_signature(ctypes.c_float),
    "snnconv_if_scan_f64": _scan_signature(ctypes.c_double),
    # x, amp, table, bias, out, geometry, fire (or None), threads, stream_bytes
    "snnconv_spike_conv2d_f32": (
        _i32,
        [*[_ptr] * 5, ctypes.POINTER(ConvGeometry), ctypes.POINTER(Fire), _i32, _i64],
    ),
}


def _layout_disagreement(dll: ctypes.CDLL, name: str, mirror: type[ctypes.Structure]) -> str:
    """How struct snnconv_<name> in the library differs from its ctypes ``mirror`` ("" if not):
    size, then each field's offset and size, asked of the library by name (-1: it has no such
    field)."""
    c_size = dll.snnconv_sizeof(name.encode(), None)
    if c_size != ctypes.sizeof(mirror):
        return f"is {c_size} bytes in the library, {ctypes.sizeof(mirror)} in cpu.{mirror.__name__}"
    for field, *_ in mirror._fields_:
        ours = getattr(mirror, field)
        theirs = [
            f(name.encode(), field.encode()) for f in (dll.snnconv_offsetof, dll.snnconv_sizeof)
        ]
        if theirs != [ours.offset, ours.size]:
            return (
                f"has field {field} at offset {theirs[0]}, {theirs[1]} bytes in the library "
                f"(-1: absent), at {ours.offset}, {ours.size} bytes in cpu.{mirror.__name__}"
            )
    return ""


def check_abi(dll: ctypes.CDLL) -> None:
    """Declare the entry points' types (SIGNATURES) on ``dll``, then raise KernelError unless it
    exports every one and agrees with this module on the ABI version and on each struct's size,
    field offsets and field sizes."""
    missing = [name for name in SIGNATURES if not hasattr(dll, name)]
    if missing:
        raise KernelError(f"kernel library {dll._name} lacks {', '.join(missing)}")
    for name, (restype, argtypes) in SIGNATURES.items():
        getattr(dll, name).restype = restype
        getattr(dll, name).argtypes = argtypes
    if dll.snnconv_abi() != ABI:
        raise KernelError(
            f"kernel library {dll._name} has ABI version {dll.snnconv_abi()}, cpu.py expects {ABI}"
        )
    for name, mirror in MIRRORS.items():
        problem = _layout_disagreement(dll, name, mirror)
        if problem:
            raise KernelError(f"struct snnconv_{name} {problem} (library {dll._name})")


def _packed(t: torch.Tensor) -> bool:
    """The elements fill numel() consecutive slots in some order (no gaps, no overlap)."""
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((d, s) for s, d in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _pointer(t: torch.Tensor | None, name: str, dtype: torch.dtype, numel: int) -> int | None:
    """``t``'s data pointer, after checking it is a dense CPU tensor of ``dtype`` and ``numel``
    elements (None passes as a null pointer)."""
    if t is None:
        return None
    if t.device.type != "cpu" or t.dtype != dtype or t.numel() != numel or not _packed(t):
        raise SimulationError(
            f"kernel argument {name}: expected a dense CPU {dtype} tensor of {numel} elements, "
            f"got {t.dtype} {tuple(t.shape)} strides {t.stride()} on {t.device}"
        )
    return t.data_ptr()


def _channels_last(t: torch.Tensor, name: str) -> None:
    if not t.is_contiguous(memory_format=torch.channels_last):
        raise SimulationError(f"kernel argument {name}: expected channels_last {tuple(t.shape)}")


@dataclass(frozen=True)
class FusedIF:
    """The IF layer that reads a lookup convolution, updated in the same pass: rows of the
    convolution are n = k*B + b (step k < steps, sample b); ``v`` and ``count`` [B, C, H, W]
    (channels_last, like the output) are updated in place; ``theta`` [steps] holds each step's
    firing threshold, ``v_th`` the spike amplitude, ``addend`` None or shaped like the output;
    ``events`` None, or for signed neurons shaped like ``v`` (spikes of either sign)."""

    v: torch.Tensor
    count: torch.Tensor
    theta: torch.Tensor
    v_th: float
    addend: torch.Tensor | None
    steps: int
    events: torch.Tensor | None = None


def check_geometry(g: ConvGeometry) -> None:
    """Raise SimulationError unless ``g`` describes a convolution the kernel can run within the
    bounds of its tensors (positive sizes, the output size the padding and stride give, a plan
    in range)."""
    sizes = (g.n, g.c, g.h, g.w, g.cout, g.kh, g.kw, g.sh, g.sw)
    ho = (g.h + 2 * g.ph - g.kh) // max(g.sh, 1) + 1
    wo = (g.w + 2 * g.pw - g.kw) // max(g.sw, 1) + 1
    if (
        min(sizes) < 1
        or min(g.ph, g.pw) < 0
        or (g.ho, g.wo) != (ho, wo)
        or min(ho, wo) < 1
        or g.gb not in (4, 8)
        or not 1 <= g.nv <= 4
        or g.gr < 1
        or g.negative not in (0, 1)
        or not g.sparse_below >= 0  # NaN too
    ):
        fields = ", ".join(f"{name}={getattr(g, name)}" for name, *_ in g._fields_)
        raise SimulationError(f"spike_conv2d: impossible geometry ({fields})")


def table_numel(g: ConvGeometry) -> int:
    """Floats in the lookup table of plan (gb, nv, gr) for this convolution."""
    groups, lanes = -(-g.c // g.gb), 16 * g.nv
    return -(-g.cout // lanes) * -(-groups // g.gr) * g.kh * g.kw * g.gr * (1 << g.gb) * lanes


class Kernels:
    """The loaded library (its ABI checked) with one typed method per entry point."""

    def __init__(self, dll: ctypes.CDLL):
        check_abi(dll)
        self.dll = dll
        self.path = Path(dll._name)

    def if_scan(
        self,
        current: torch.Tensor,
        constant: bool,
        addend: torch.Tensor | None,
        v: torch.Tensor,
        theta: torch.Tensor,
        v_th: float,
        out: torch.Tensor,
        count: torch.Tensor,
        threads: int | None = None,
        events: torch.Tensor | None = None,
    ) -> None:
        """The IF scan in place on ``v``, ``out`` and ``count`` (float32 or float64; flat index
        i is the same neuron in every tensor, which ``usable`` checks); with ``events`` (shaped
        like ``v``) the neurons are signed and ``events`` counts spikes of either sign."""
        fn = {
            torch.float32: self.dll.snnconv_if_scan_f32,
            torch.float64: self.dll.snnconv_if_scan_f64,
        }.get(v.dtype)
        if fn is None:
            raise SimulationError(f"if_scan: float32 or float64 only, got {v.dtype}")
        n, steps, dt = v.numel(), theta.numel(), v.dtype
        fn(
            _pointer(current, "current", dt, n if constant else steps * n),
            int(constant),
            None if addend is None else _pointer(addend, "addend", dt, steps * n),
            _pointer(v, "v", dt, n),
            _pointer(theta, "theta", dt, steps),
            v_th,
            _pointer(out, "out", dt, steps * n),
            _pointer(count, "count", dt, n),
            _pointer(events, "events", dt, n),
            steps,
            n,
            torch.get_num_threads() if threads is None else threads,
        )

    def spike_conv2d(
        self,
        x: torch.Tensor,
        amp: torch.Tensor,
        table: torch.Tensor,
        bias: torch.Tensor,
        out: torch.Tensor,
        geometry: ConvGeometry,
        fire: FusedIF | None = None,
        stream_bytes: int = 1 << 62,
        threads: int | None = None,
    ) -> bool:
        """The lookup convolution of ``x`` [n, c, h, w] (channels_last float32 spike map) into
        ``out`` [n, cout, ho, wo] (channels_last), and with ``fire`` the IF layer's update, out
        then holding its spikes. False if ``x`` is not a spike map (nothing written)."""
        g, f32 = geometry, torch.float32
        check_geometry(g)
        _channels_last(x, "x")
        _channels_last(out, "out")
        opix = g.ho * g.wo * g.cout
        args = [
            _pointer(x, "x", f32, g.n * g.c * g.h * g.w),
            _pointer(amp, "amp", f32, g.c),
            _pointer(table, "table", f32, table_numel(g)),
            _pointer(bias, "bias", f32, g.cout),
            _pointer(out, "out", f32, g.n * opix),
        ]
        c_fire = None
        if fire is not None:
            batch = g.n // fire.steps
            if batch * fire.steps != g.n:
                raise SimulationError(f"spike_conv2d: {g.n} images are not steps={fire.steps} x B")
            c_fire = Fire(
                _pointer(fire.addend, "addend", f32, g.n * opix),
                _pointer(fire.v, "v", f32, batch * opix),
                _pointer(fire.count, "count", f32, batch * opix),
                _pointer(fire.theta, "theta", f32, fire.steps),
                fire.v_th,
                batch,
                fire.steps,
                _pointer(fire.events, "events", f32, batch * opix),
            )
        threads = torch.get_num_threads() if threads is None else threads
        done = self.dll.snnconv_spike_conv2d_f32(
            *args,
            ctypes.byref(g),
            None if c_fire is None else ctypes.byref(c_fire),
            threads,
            stream_bytes,
        )
        if done == 2:
            raise SimulationError("spike_conv2d: the library refused the geometry's plan")
        return done == 0


def load(isa: str = "native") -> Kernels:
    """The kernels built from csrc/ for ``isa`` (options.KERNEL_ISAS: FLAGS + ISA_FLAGS[isa]),
    from the cache or compiled now, their ABI checked. Raises KernelError (no compiler, the build
    failed, an ABI mismatch, an x86 ISA asked of another CPU) or OSError (the library does not
    load)."""
    options.choice("kernel ISA", isa, options.KERNEL_ISAS)
    if isa != "native" and not build.x86():
        raise KernelError(f"kernel ISA {isa!r} is an x86 instruction set; this CPU is not x86")
    return Kernels(build.load(CSRC, FLAGS + ISA_FLAGS[isa], OPTIONAL_FLAGS))


# ---- What the simulator calls (simulation/neuron.py, lookup_conv.py) ----


def kernel() -> Kernels | None:
    """The compiled kernels, or None (SNNCONV_FUSED=0, no compiler, or loading failed once):
    backend.cpp()."""
    from snnconv.kernels import backend  # backend imports this module

    return backend.cpp()


def scan_available(device: torch.device) -> bool:
    """A fused IF scan exists for this device (backend.scan_backend is "cpp" or "triton")."""
    from snnconv.kernels import backend

    return backend.scan_backend(device) != "torch"


def if_scan(
    current: torch.Tensor,
    constant: bool,
    addend: torch.Tensor | None,
    v: torch.Tensor,
    theta: torch.Tensor,
    v_th: torch.Tensor,
    out: torch.Tensor,
    count: torch.Tensor,
) -> None:
    """Run the device's fused scan (where ``scan_available``) in place on v, out and count;
    ``theta`` holds each step's firing threshold, ``v_th`` (0-dim) the spike amplitude."""
    from snnconv.kernels import backend

    which = backend.scan_backend(v.device)
    if which == "triton":
        from snnconv.kernels import triton_scan  # imports triton

        return triton_scan.if_scan(current, constant, addend, v, theta, v_th, out, count)
    if which != "cpp":
        raise SimulationError(f"no fused IF scan on {v.device} (check scan_available first)")
    kernel().if_scan(current, constant, addend, v, theta.contiguous(), v_th.item(), out, count)


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (
        t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    )


def usable(
    current: torch.Tensor,
    constant: bool,
    addend: torch.Tensor | None,
    v: torch.Tensor,
    out: torch.Tensor,
    v_th: torch.Tensor,
) -> bool:
    """A fused scan applies (where scan_available): float tensors, one scalar V_th, dense tensors
    in which flat index i is the same neuron in the current (each step), the addend, the membrane
    and the output."""
    if v.dtype not in (torch.float32, torch.float64) or v_th.dim():
        return False
    if addend is not None and (
        constant
        or addend.dtype != v.dtype
        or addend.shape != current.shape
        or addend.stride() != current.stride()
    ):
        return False
    n = v.numel()
    steps_ok = all(
        t.stride(0) == n and t.stride()[1:] == v.stride()
        for t in ([out] if constant else [out, current])
    )
    return (
        current.dtype == v.dtype
        and _dense(v)
        and steps_ok
        and v.dtype == out.dtype == v_th.dtype
        and (not constant or current.stride() == v.stride())
    )
