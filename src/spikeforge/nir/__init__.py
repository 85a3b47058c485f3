"""NIR (Neuromorphic Intermediate Representation) export and import.

NIR graphs are read by snnTorch, Norse, Sinabs, Lava, SpiNNaker2, Loihi, Speck, Xylo and
others. This package needs the optional extra ``pip install 'spikeforge[nir]'`` (the
``nir`` and ``nirtorch`` packages); importing it without them works, using it raises
:class:`NIRUnavailableError`.

* :func:`export_nir` / :func:`write_nir`: directly trained networks (LIF and IF layers
  with ``reset="zero"``; Linear, Conv1d/2d, AvgPool2d, Flatten, BatchNorm folded into
  the layer before it) and converted :class:`~spikeforge.convert.SpikingModel` networks
  (IF neurons with ``reset="zero"``, ``v_init=0``, Γ=1; average pooling).
* :func:`import_nir`: a graph of LIF/IF/LI/I neurons and Affine/Linear/Scale/Conv/
  SumPool2d/AvgPool2d/Flatten nodes as a SpikingModel that runs ``[T, N, ...]``.

See :mod:`spikeforge.nir.export` for the discretization (``τ = dt/(1 − β)``,
``R = τ/dt``) and what cannot be expressed; every such case raises a typed error that
names the layer.
"""

from spikeforge.nir.errors import NIRExportError, NIRImportError, NIRUnavailableError
from spikeforge.nir.export import DEFAULT_DT, export_nir, threshold_below, write_nir
from spikeforge.nir.importer import import_nir, threshold_above
from spikeforge.nir.modules import NIRNeuron, Scale

__all__ = [
    "DEFAULT_DT",
    "NIRExportError",
    "NIRImportError",
    "NIRNeuron",
    "NIRUnavailableError",
    "Scale",
    "export_nir",
    "import_nir",
    "threshold_above",
    "threshold_below",
    "write_nir",
]
