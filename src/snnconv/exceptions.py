"""Every exception snnconv raises on purpose, under one base the command line catches.

Each message names what is wrong (the file, the node, the option) and, where there is one, the fix.
The CLI prints ``snnconv: error: <message>`` for any ``SnnconvError`` and exits with status 2.
"""

from __future__ import annotations


class SnnconvError(Exception):
    """Base of every snnconv error a user can act on."""


class OptionError(SnnconvError, ValueError):
    """An option has a value outside its allowed set or range (names the option and the set)."""


class ConversionError(SnnconvError):
    """The model cannot be converted: names the node, the op and the fix."""


class SimulationError(SnnconvError, RuntimeError):
    """An op failed or broke the time-folded layout during simulation; names the node."""


class CheckpointError(SnnconvError):
    """A checkpoint is missing, unreadable or not an snnconv model file; names the file."""


class KernelError(SnnconvError, RuntimeError):
    """A compiled kernel cannot be built, loaded or trusted (ABI mismatch, damaged cache entry,
    bad arguments); the PyTorch path takes over where that is possible."""


class DataError(SnnconvError):
    """A dataset file is missing, corrupt or not in the expected format; names the file."""
