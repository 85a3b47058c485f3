"""Model registry: build any network of the project by name."""

from spikeforge.models.registry import create_model, list_models, register_model
from spikeforge.models import lenet  # noqa: F401  (registers its models)
from spikeforge.models import snn  # noqa: F401  (registers its models)
from spikeforge.models import unet  # noqa: F401  (registers its models)
from spikeforge.models import backbones  # noqa: F401  (registers its models)
from spikeforge.models import fastnet  # noqa: F401  (registers its models)

__all__ = ["create_model", "list_models", "register_model"]
