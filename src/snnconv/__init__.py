"""snnconv: convert trained ANNs into integrate-and-fire SNNs (Deng & Gu, ICLR 2021), measure
them.

The public API; everything else is reached through its subpackage (``snnconv.io.data``,
``snnconv.zoo.models``, ...). A map of the modules is in docs/design.md.
"""

from snnconv.activations import QCFS, ThresholdReLU
from snnconv.conversion.calibrate import (
    Calibration,
    apply_calibration,
    calibrate,
    calibration_state,
)
from snnconv.conversion.convert import SpikingNetwork, convert
from snnconv.conversion.graph import inspect
from snnconv.exceptions import (
    CheckpointError,
    ConversionError,
    DataError,
    OptionError,
    SimulationError,
    SnnconvError,
)
from snnconv.io.nir import export_nir, import_nir
from snnconv.simulation.neuron import IFNeurons

__all__ = [
    "QCFS",
    "Calibration",
    "CheckpointError",
    "ConversionError",
    "DataError",
    "IFNeurons",
    "OptionError",
    "SimulationError",
    "SnnconvError",
    "SpikingNetwork",
    "ThresholdReLU",
    "__version__",
    "apply_calibration",
    "calibrate",
    "calibration_state",
    "convert",
    "export_nir",
    "import_nir",
    "inspect",
]
__version__ = "0.2.0"
