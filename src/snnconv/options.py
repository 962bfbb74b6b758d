"""The options of conversion, simulation and measurement: their allowed values, defaults and checks.

Each option list is a ``Literal`` type here; the tuples of allowed values are derived from it,
the library checks values with ``choice``, and the command line takes its ``choices`` and defaults
from this module. The number of time steps T is checked by ``check_steps`` and nowhere else.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from snnconv.exceptions import OptionError

Shift = Literal["bias", "membrane", "none"]
Neuron = Literal["if", "signed"]  # see simulation.neuron: binary spikes, or +-V_th spikes
ThresholdMode = Literal["activation", "max", "percentile"]
Readout = Literal["current", "spikes"]
MaxPool = Literal["error", "avg"]
Schedule = Literal["cosine", "step"]  # training LR schedule after the warm-up
Device = Literal["auto", "cpu", "cuda"]  # training device ("auto": CUDA if there is one)
CalibrationMethod = Literal[
    "none", "bias", "potential", "mse", "threshold"
]  # see conversion.calibrate
CalibrationGranularity = Literal["channel", "neuron"]
# The widest x86 vector instructions the compiled kernels may use (SNNCONV_ISA in the environment;
# "native": all the CPU has). A lower one runs a machine's code as on an older CPU.
KernelIsa = Literal["native", "avx2", "sse2"]

SHIFTS: tuple[str, ...] = get_args(Shift)
NEURONS: tuple[str, ...] = get_args(Neuron)
THRESHOLD_MODES: tuple[str, ...] = get_args(ThresholdMode)
READOUTS: tuple[str, ...] = get_args(Readout)
MAXPOOLS: tuple[str, ...] = get_args(MaxPool)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
DEVICES: tuple[str, ...] = get_args(Device)
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)[1:]  # what calibrate() does
CALIBRATION_CHOICES: tuple[str, ...] = get_args(CalibrationMethod)  # the CLI's, "none" first
CALIBRATION_GRANULARITIES: tuple[str, ...] = get_args(CalibrationGranularity)
KERNEL_ISAS: tuple[str, ...] = get_args(KernelIsa)
CALIBRATION_IMAGES = 1024  # unaugmented training images (the first N) for --calibrate
CALIBRATION_BATCH = 128

DEFAULT_PERCENTILE = 99.99
# 45 nm CMOS energy per operation (Horowitz 2014, as used by most SNN papers): a 32-bit float
# multiply-accumulate and a 32-bit float add.
E_MAC_PJ = 4.6
E_AC_PJ = 0.9
# Shift sweep: fractions f of V_th/T (f = 1/2 is the paper's V_th/(2T)).
SHIFT_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(11))


def flag(name: str) -> str:
    """The command-line option of a parameter: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def choice(name: str, value, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``; else OptionError naming the option and the set."""
    if value not in allowed:
        raise OptionError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_shift(shift: str) -> str:
    return choice("shift", shift, SHIFTS)


def check_neuron(neuron: str) -> str:
    return choice("neuron", neuron, NEURONS)


def check_count(value, what: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (bools refused): a batch size, a number of images, epochs..."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def check_steps(steps, what: str = "T") -> int:
    """The number of time steps: an int >= 1 (bools refused)."""
    return check_count(steps, what)


def check_number(value, what: str, low: float = 0.0, high: float = math.inf) -> float:
    """A finite real number in [low, high] (NaN and infinities refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        bounds = {(True, True): "", (False, True): f" >= {low:g}", (True, False): f" <= {high:g}"}
        where = bounds.get((low == -math.inf, high == math.inf), f" in [{low:g}, {high:g}]")
        raise OptionError(f"{what} must be a finite number{where}, got {value}")
    return value


def check_percentile(p, what: str = "percentile") -> float:
    """A percentile in (0, 100]."""
    value = float(p)
    if not 0 < value <= 100:
        raise OptionError(f"{what} must be in (0, 100], got {p}")
    return value


def check_energy(name: str, value) -> float:
    """A per-operation energy in pJ: finite and >= 0."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise OptionError(f"{name} must be a finite number >= 0 (pJ), got {value}")
    return value
