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
ABI = 7  # SNNCONV_ABI in csrc/snnconv_kernels.h

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
        ("vth", _ptr),
        ("batch", _i64),
        ("steps", _i64),
        ("events", _ptr),
        ("masks", _ptr),
        ("masks_gb", _i32),
        ("masks_ph", _i32),
        ("masks_pw", _i32),
        ("masks_nonzero", _ptr),
        ("masks_only", _i32),
        ("addend_masks", _ptr),
        ("addend_gb", _i32),
        ("addend_ph", _i32),
        ("addend_pw", _i32),
        ("addend_negative", _i32),
        ("addend_vth", _ptr),
        ("fresh", _i32),
    ]


MIRRORS: dict[str, type[ctypes.Structure]] = {"conv_geometry": ConvGeometry, "fire": Fire}


def _scan_signature():
    # cur, constant, add, v, theta, vth, P, out, count, events, steps, n, fresh, threads
    return None, [_ptr, _i32, *[_ptr] * 4, _i64, *[_ptr] * 3, _i64, _i64, _i32, _i32]


# Each entry point's (return type, argument types): the one place they are declared.
SIGNATURES = {
    "snnconv_abi": (_i32, []),
    "snnconv_sizeof": (_i64, [ctypes.c_char_p, ctypes.c_char_p]),
    "snnconv_offsetof": (_i64, [ctypes.c_char_p, ctypes.c_char_p]),
    "snnconv_if_scan_f32": _scan_signature(),
    "snnconv_if_scan_f64": _scan_signature(),
    # x, amp, table, bias, out, geometry, fire (or None), threads, stream_bytes, masks (or
    # None), masks_nonzero
    "snnconv_spike_conv2d_f32": (
        _i32,
        [*[_ptr] * 5, ctypes.POINTER(ConvGeometry), ctypes.POINTER(Fire), _i32, _i64, _ptr, _i64],
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


def mask_bytes(c: int, h: int, w: int, gb: int, ph: int, pw: int, negative: bool) -> int:
    """Bytes of one image's masks in a lookup convolution's layout: [h + 2ph][w + 2pw][MS], MS =
    ceil(c / gb) (twice that with ``negative``: the -amp masks after the +amp ones)."""
    groups = -(-c // gb)
    return (h + 2 * ph) * (w + 2 * pw) * (2 * groups if negative else groups)


@dataclass(frozen=True)
class SpikeMasks:
    """The masks of a spike map [n, c, h, w] in the layout of the lookup convolution that reads it
    (channels in groups of ``gb`` bits, a zero border of (``ph``, ``pw``), the -amp masks too with
    ``negative``): ``data`` uint8 of n * mask_bytes(...) and ``nonzero`` int64 [1], the number of
    non-zero masks. Made by the fused update of the IF layer that writes the spikes
    (``FusedIF.masks``), read by the convolution instead of a mask pass over the floats: the same
    bytes that pass would make, so the same sums. ``only``: the masks are all the writer makes of
    its spikes (their one reader reads these): the spike map itself is not written."""

    data: torch.Tensor
    nonzero: torch.Tensor
    gb: int
    ph: int
    pw: int
    negative: bool
    only: bool = False

    def spikes_into(self, out: torch.Tensor, v_th: torch.Tensor | float) -> torch.Tensor:
        """The spike map these masks were made from, written into ``out`` [n, c, h, w]
        (channels_last float32): V_th (0-dim, or [c] per channel) where a +amp bit is set, -V_th
        where a -amp one is, else +0, as the writer's update makes them (for a reader that needs
        the values after all)."""
        n, c, h, w = out.shape
        groups = -(-c // self.gb)
        per = 2 * groups if self.negative else groups
        data = self.data.view(n, h + 2 * self.ph, w + 2 * self.pw, per)
        data = data[:, self.ph : self.ph + h, self.pw : self.pw + w]
        bits = (data.unsqueeze(-1) >> torch.arange(self.gb, dtype=torch.uint8)) & 1
        bits = bits.reshape(n, h, w, 2 if self.negative else 1, groups * self.gb)[..., :c]
        fired = bits[..., 0, :].float()
        if self.negative:
            fired -= bits[..., 1, :].float()
        # s * v_th, as the update computes it
        out.permute(0, 2, 3, 1).copy_(fired.mul_(torch.as_tensor(v_th, dtype=torch.float32)))
        return out


@dataclass(frozen=True)
class FusedIF:
    """The IF layer that reads a lookup convolution, updated in the same pass: rows of the
    convolution are n = k*B + b (step k < steps, sample b); ``v`` and ``count`` [B, C, H, W]
    (channels_last, like the output) are updated in place; ``theta`` [steps, C] holds each
    step's firing threshold per channel, ``v_th`` [C] the spike amplitudes (a layer's one V_th
    repeated, or one per channel), ``addend`` None or shaped like the output;
    ``events`` None, or for signed neurons shaped like ``v`` (spikes of either sign); ``masks``
    None, or where the masks of the spikes go for the convolution that reads them next;
    ``addend_masks``: the addend as the masks another IF layer handed on (its spikes, amplitudes
    ``addend_vth`` [C]), read instead of ``addend``'s values. ``fresh``: step 0 is the
    simulation's first, so ``count`` and ``events`` are written there, not read (``IFState``'s
    ``unset``)."""

    v: torch.Tensor
    count: torch.Tensor
    theta: torch.Tensor
    v_th: torch.Tensor
    addend: torch.Tensor | None
    steps: int
    events: torch.Tensor | None = None
    masks: SpikeMasks | None = None
    addend_masks: SpikeMasks | None = None
    addend_vth: torch.Tensor | None = None
    fresh: bool = False


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
        v_th: torch.Tensor,
        out: torch.Tensor,
        count: torch.Tensor,
        threads: int | None = None,
        events: torch.Tensor | None = None,
        fresh: bool = False,
    ) -> None:
        """The IF scan in place on ``v``, ``out`` and ``count`` (float32 or float64; flat index
        i is the same neuron in every tensor, which ``usable`` checks); ``theta`` [steps, P] and
        ``v_th`` [P] as ``IFParameters.kernel_thresholds`` makes them (P = 1, or one per channel
        with the channels innermost in ``v``); with ``events`` (shaped like ``v``) the neurons
        are signed and ``events`` counts spikes of either sign; ``fresh``: the first step is
        the simulation's first, ``count`` and ``events`` are written there, not read."""
        fn = {
            torch.float32: self.dll.snnconv_if_scan_f32,
            torch.float64: self.dll.snnconv_if_scan_f64,
        }.get(v.dtype)
        if fn is None:
            raise SimulationError(f"if_scan: float32 or float64 only, got {v.dtype}")
        n, steps, dt = v.numel(), theta.shape[0], v.dtype
        P = v_th.numel()
        if theta.shape != (steps, P) or n % P:
            raise SimulationError(
                f"if_scan: thresholds {tuple(theta.shape)} and amplitudes {tuple(v_th.shape)} do "
                f"not fit {n} neurons"
            )
        fn(
            _pointer(current, "current", dt, n if constant else steps * n),
            int(constant),
            None if addend is None else _pointer(addend, "addend", dt, steps * n),
            _pointer(v, "v", dt, n),
            _pointer(theta, "theta", dt, steps * P),
            _pointer(v_th, "v_th", dt, P),
            P,
            _pointer(out, "out", dt, steps * n),
            _pointer(count, "count", dt, n),
            _pointer(events, "events", dt, n),
            steps,
            n,
            int(fresh),
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
        masks: SpikeMasks | None = None,
    ) -> bool:
        """The lookup convolution of ``x`` [n, c, h, w] (channels_last float32 spike map) into
        ``out`` [n, cout, ho, wo] (channels_last), and with ``fire`` the IF layer's update, out
        then holding its spikes. False if ``x`` is not a spike map (nothing written). ``masks``:
        x's masks in this convolution's layout, used instead of a pass over x (not checked
        against x: the caller vouches that they were made from it)."""
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
        c_fire = None if fire is None else _fire(fire, g)
        threads = torch.get_num_threads() if threads is None else threads
        done = self.dll.snnconv_spike_conv2d_f32(
            *args,
            ctypes.byref(g),
            None if c_fire is None else ctypes.byref(c_fire),
            threads,
            stream_bytes,
            *_masks_in(masks, g),
        )
        if done == 2:
            raise SimulationError("spike_conv2d: the library refused the geometry's plan")
        return done == 0


def _fire(fire: FusedIF, g: ConvGeometry) -> Fire:
    """snnconv_fire for ``fire`` on convolution ``g``, every tensor checked against it."""
    f32, opix = torch.float32, g.ho * g.wo * g.cout
    batch = g.n // fire.steps
    if batch * fire.steps != g.n:
        raise SimulationError(f"spike_conv2d: {g.n} images are not steps={fire.steps} x B")
    return Fire(
        None if fire.addend_masks is not None else _pointer(fire.addend, "addend", f32, g.n * opix),
        _pointer(fire.v, "v", f32, batch * opix),
        _pointer(fire.count, "count", f32, batch * opix),
        _pointer(fire.theta, "theta", f32, fire.steps * g.cout),
        _pointer(fire.v_th, "v_th", f32, g.cout),
        batch,
        fire.steps,
        _pointer(fire.events, "events", f32, batch * opix),
        *_masks_out(fire.masks, g, fire.events is not None),
        *_addend_masks(fire.addend_masks, fire.addend_vth, g),
        int(fire.fresh),
    )


def _masks_out(m: SpikeMasks | None, g: ConvGeometry, signed: bool) -> tuple:
    """snnconv_fire's masks fields for masks of this convolution's output (null: none), made by
    ``signed`` neurons or not."""
    if m is None:
        return None, 0, 0, 0, None, 0
    if m.negative != signed:
        raise SimulationError("spike_conv2d: signed masks for ordinary neurons, or back")
    return (
        _output_masks(m, g, "masks"),
        m.gb,
        m.ph,
        m.pw,
        _pointer(m.nonzero, "masks_nonzero", torch.int64, 1),
        int(m.only),
    )


def _addend_masks(m: SpikeMasks | None, v_th: torch.Tensor | None, g: ConvGeometry) -> tuple:
    """snnconv_fire's addend_masks fields for masks of an addend shaped like the output (and its
    amplitudes [cout])."""
    if m is None:
        return None, 0, 0, 0, 0, None
    amp = _pointer(v_th, "addend_vth", torch.float32, g.cout)
    return _output_masks(m, g, "addend_masks"), m.gb, m.ph, m.pw, int(m.negative), amp


def _output_masks(m: SpikeMasks, g: ConvGeometry, name: str) -> int:
    """The pointer to masks ``m`` over the convolution's output, their layout and size checked."""
    if m.gb not in (4, 8) or min(m.ph, m.pw) < 0:
        raise SimulationError(f"spike_conv2d: impossible mask layout gb={m.gb} ({m.ph}, {m.pw})")
    size = g.n * mask_bytes(g.cout, g.ho, g.wo, m.gb, m.ph, m.pw, m.negative)
    return _pointer(m.data, name, torch.uint8, size)


def _masks_in(m: SpikeMasks | None, g: ConvGeometry) -> tuple:
    """The masks and masks_nonzero arguments for masks of this convolution's input."""
    if m is None:
        return None, 0
    if (m.gb, m.ph, m.pw, m.negative) != (g.gb, g.ph, g.pw, bool(g.negative)):
        raise SimulationError(
            f"spike_conv2d: masks made for gb={m.gb} padding ({m.ph}, {m.pw})"
            f"{' signed' if m.negative else ''}, not this convolution's"
        )
    size = g.n * mask_bytes(g.c, g.h, g.w, g.gb, g.ph, g.pw, bool(g.negative))
    return _pointer(m.data, "masks", torch.uint8, size), int(m.nonzero.item())


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
    fresh: bool = False,
) -> None:
    """Run the device's fused scan (where ``scan_available``) in place on v, out and count;
    ``theta`` [steps, P] holds each step's firing thresholds, ``v_th`` [P] the spike amplitudes
    (``IFParameters.kernel_thresholds``; on CUDA P = 1); ``fresh``: the first step is the
    simulation's first, ``count``'s contents do not matter."""
    from snnconv.kernels import backend

    which = backend.scan_backend(v.device)
    if which == "triton":
        from snnconv.kernels import triton_scan  # imports triton

        if fresh:
            count.zero_()
        return triton_scan.if_scan(
            current, constant, addend, v, theta.reshape(-1), v_th.reshape(()), out, count
        )
    if which != "cpp":
        raise SimulationError(f"no fused IF scan on {v.device} (check scan_available first)")
    kernel().if_scan(current, constant, addend, v, theta, v_th, out, count, fresh=fresh)


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
    """A fused scan applies (where scan_available): float tensors, dense tensors in which flat
    index i is the same neuron in the current (each step), the addend, the membrane and the
    output, and one V_th per layer, or one per channel (on the CPU, channels innermost: [B, C] or
    channels_last [B, C, H, W]). ``v_th`` is as ``threshold_like`` shapes it."""
    if v.dtype not in (torch.float32, torch.float64):
        return False
    if v_th.numel() > 1 and not (
        v.device.type == "cpu"
        and v.dim() in (2, 4)
        and v.shape[1] == v_th.numel()
        and v.is_contiguous(
            memory_format=torch.channels_last if v.dim() == 4 else torch.contiguous_format
        )
    ):
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
