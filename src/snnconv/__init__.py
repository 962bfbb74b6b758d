"""snnconv: convert threshold-ReLU ANNs into integrate-and-fire SNNs (Deng & Gu, ICLR 2021)."""
from .activations import ThresholdReLU
from .convert import SpikingNetwork, convert
from .graph import ConversionError, inspect
from .neurons import IFNeurons
from .simulate import SimulationError

__all__ = ["ThresholdReLU", "convert", "SpikingNetwork", "ConversionError", "inspect",
           "IFNeurons", "SimulationError"]
__version__ = "0.1.0"
