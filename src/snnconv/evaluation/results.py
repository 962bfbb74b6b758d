"""What an evaluation measured, as typed records, and results.json: the schema is these classes.

``Results.to_json()`` writes them as strict JSON (RFC 8259: no NaN or Infinity) and
``Results.from_json()`` reads them back equal. Maps keyed by T (``dict[int, ...]``) become JSON
objects keyed by the decimal string of T ("16"); ``None`` becomes ``null`` (only where a field
says so). A value that is not finite is refused with a SimulationError naming its place
(``results.layers[3].max_activation``): it can only come from a network that computed NaN or
infinity, and results.json holds finite numbers only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from snnconv.conversion.calibrate import Calibration
from snnconv.exceptions import SimulationError, SnnconvError
from snnconv.io import checkpoint

SCHEMA = "snnconv-results-1"


@dataclass(frozen=True)
class ErrorParts:
    """Mean |ANN activation - SNN rate| of one layer at one T and its three parts (they add up to
    ``total``; see snnconv.measures.error_split)."""

    clipping: float
    quantisation: float
    unevenness: float
    total: float


@dataclass(frozen=True)
class LayerResult:
    """One IF layer: its threshold(s), firing rate per T (spikes per neuron per step) and, when the
    ANN's activations were recorded, their max and mean and the error split per T (else ``None``
    and an empty map)."""

    name: str
    v_th: float | list[float]
    firing_rate: dict[int, float]
    max_activation: float | None = None
    mean_activation: float | None = None
    error: dict[int, ErrorParts] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerCost:
    """Cost per image of the synapses leaving one source layer ("input" or an IF layer)."""

    name: str
    ann_macs: float
    snn_macs: float
    sops: dict[int, float]
    energy_snn_pj: dict[int, float]
    energy_ann_pj: float


@dataclass(frozen=True)
class CostAtT:
    """Whole-network cost per image at one T. ``energy_ratio`` = SNN / ANN energy; ``None`` (null)
    when the ANN's energy is 0 (``e_mac_pj`` = 0)."""

    sops: float
    first_layer_macs: float
    energy_snn_pj: float
    energy_ann_pj: float
    energy_ratio: float | None


@dataclass(frozen=True)
class Cost:
    e_mac_pj: float
    e_ac_pj: float
    ann_macs: float
    first_layer_macs: float
    per_T: dict[int, CostAtT]
    layers: list[LayerCost]


@dataclass(frozen=True)
class Environment:
    """Where the numbers were measured: versions, threads, and which kernels ran
    (``snnconv.kernels.backend.describe()``: scan and conv backends, CPU instruction set, ...)."""

    snnconv: str
    torch: str
    python: str
    threads: int
    kernels: dict[str, Any]

    @classmethod
    def current(cls, device: torch.device | str = "cpu") -> Environment:
        import snnconv
        from snnconv.kernels import backend

        return cls(
            snnconv=snnconv.__version__,
            torch=torch.__version__,
            python=platform.python_version(),
            threads=torch.get_num_threads(),
            kernels=backend.describe(device),
        )


@dataclass(frozen=True)
class CheckpointRecord:
    """The model file evaluated: the name or path as given, the file it resolved to (absolute)
    and the sha256 of its bytes."""

    name: str
    file: str
    sha256: str

    @classmethod
    def of(cls, name: str, file: str | Path) -> CheckpointRecord:
        path = Path(file).resolve()
        return cls(name=str(name), file=str(path), sha256=checkpoint.sha256(path))


@dataclass(frozen=True)
class Results:
    """One evaluation (accuracies as fractions, costs per image). ``dataset``, ``model`` and
    ``checkpoint`` are filled in by the command line (``None`` from the Python API)."""

    n_images: int
    ann_accuracy: float
    shift: str
    threshold: str
    readout: str
    snn_accuracy: dict[int, float]
    seconds: float
    one_run: bool
    layers: list[LayerResult]
    largest_error_growth: dict[int, str]
    cost: Cost
    environment: Environment
    dataset: str | None = None
    model: str | None = None
    checkpoint: CheckpointRecord | None = None
    calibration: Calibration | None = None  # the post-conversion calibration, if any
    neuron: str = "if"  # "if" or "signed" (convert's neuron)
    schema: str = SCHEMA

    @property
    def steps(self) -> list[int]:
        """The T values evaluated, ascending."""
        return sorted(self.snn_accuracy)

    def to_dict(self) -> dict:
        """The JSON object (T keys as strings; "schema" first); SimulationError on a value that
        is not finite."""
        obj = _dump(self, "results")
        return {"schema": obj.pop("schema"), **obj}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, obj: dict) -> Results:
        if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
            found = obj.get("schema") if isinstance(obj, dict) else type(obj).__name__
            raise SnnconvError(f"not snnconv results (schema {SCHEMA}): found {found!r}")
        return _load(cls, obj, "results")

    @classmethod
    def from_json(cls, text: str) -> Results:
        return cls.from_dict(json.loads(text))


def _dump(value, where: str):
    if dataclasses.is_dataclass(value):
        return {f.name: _dump(getattr(value, f.name), f"{where}.{f.name}") for f in _fields(value)}
    if isinstance(value, dict):
        return {str(k): _dump(v, f"{where}[{k}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dump(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise SimulationError(
            f"{where} is {value}: the network computed NaN or infinity (a broken checkpoint, "
            "e.g. a BatchNorm with negative running_var?); results.json holds finite numbers only"
        )
    return value


def _fields(cls_or_obj) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls_or_obj))


def _load(tp, value, where: str):
    """``value`` (parsed JSON) as type ``tp``; SnnconvError naming the place where it does not
    fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms:
            if _fits(arm, value):
                return _load(arm, value, where)
        raise SnnconvError(f"{where}: expected {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SnnconvError(f"{where}: expected an object, got {value!r}")
        hints = typing.get_type_hints(tp)
        known = {f.name for f in _fields(tp)}
        extra = value.keys() - known
        if extra:
            raise SnnconvError(f"{where}: unknown field(s) {sorted(extra)}")
        return tp(**{k: _load(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin is dict:
        key, val = args
        return {_key(key, k, where): _load(val, v, f"{where}[{k}]") for k, v in value.items()}
    if origin is list:
        return [_load(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not _fits(tp, value):
        raise SnnconvError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return float(value) if tp is float else value


def _key(tp, text: str, where: str):
    try:
        return tp(text)
    except ValueError:
        raise SnnconvError(f"{where}: key {text!r} is not a {tp.__name__}") from None


def _fits(tp, value) -> bool:
    origin = typing.get_origin(tp)
    if origin is list:
        return isinstance(value, list)
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if tp is Any:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)
