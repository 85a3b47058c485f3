"""ANN→SNN conversion on the traced graph (torch.fx)."""

from spikeforge.convert.calibrate import ActivationRecorder, positive_percentile
from spikeforge.convert.core import SiteInfo, SpikingModel, TimeAlign, convert
from spikeforge.convert.finetune import calibrate_end_to_end
from spikeforge.convert.graph import ConversionError, fold_batchnorm, fold_bn_into, trace

__all__ = [
    "ActivationRecorder",
    "ConversionError",
    "SiteInfo",
    "SpikingModel",
    "TimeAlign",
    "calibrate_end_to_end",
    "convert",
    "fold_batchnorm",
    "fold_bn_into",
    "positive_percentile",
    "trace",
]
