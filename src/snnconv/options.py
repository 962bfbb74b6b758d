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
ThresholdMode = Literal["activation", "max", "percentile"]
Readout = Literal["current", "spikes"]
MaxPool = Literal["error", "avg"]

SHIFTS: tuple[str, ...] = get_args(Shift)
THRESHOLD_MODES: tuple[str, ...] = get_args(ThresholdMode)
READOUTS: tuple[str, ...] = get_args(Readout)
MAXPOOLS: tuple[str, ...] = get_args(MaxPool)

DEFAULT_PERCENTILE = 99.99
# 45 nm CMOS energy per operation (Horowitz 2014, as used by most SNN papers): a 32-bit float
# multiply-accumulate and a 32-bit float add.
E_MAC_PJ = 4.6
E_AC_PJ = 0.9
# Shift sweep: fractions f of V_th/T (f = 1/2 is the paper's V_th/(2T)).
SHIFT_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(11))


def choice(name: str, value, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``; else OptionError naming the option and the set."""
    if value not in allowed:
        raise OptionError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_shift(shift: str) -> str:
    return choice("shift", shift, SHIFTS)


def check_steps(steps, what: str = "T") -> int:
    """The number of time steps: an int >= 1 (bools refused)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise OptionError(f"{what} must be an integer >= 1, got {steps!r}")
    return steps


def check_percentile(p) -> float:
    """A percentile in (0, 100]."""
    value = float(p)
    if not 0 < value <= 100:
        raise OptionError(f"percentile must be in (0, 100], got {p}")
    return value


def check_energy(name: str, value) -> float:
    """A per-operation energy in pJ: finite and >= 0."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise OptionError(f"{name} must be a finite number >= 0 (pJ), got {value}")
    return value
