"""spikeforge: spiking neural networks in PyTorch — ANN→SNN conversion and direct training."""

from spikeforge.convert import ConversionError, SpikingModel, convert
from spikeforge.errors import SpikeforgeError
from spikeforge.neurons import IFNeuron

__version__ = "0.1.0"
__all__ = ["ConversionError", "IFNeuron", "SpikeforgeError", "SpikingModel", "convert", "__version__"]
