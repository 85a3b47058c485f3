"""Errors of the NIR interchange: what NIR cannot express, graphs spikeforge cannot run."""

from __future__ import annotations

from spikeforge.errors import ConversionError, SpikeforgeError


class NIRUnavailableError(SpikeforgeError, ImportError):
    """The optional packages ``nir`` (and ``nirtorch``) are not installed."""


class NIRExportError(ConversionError):
    """A network has a layer or a setting that NIR cannot express.

    ``layer`` names the layer (module name or graph node), ``reason`` says what NIR
    lacks and, where there is one, how to get an exportable network.
    """

    def __init__(self, layer: str, reason: str) -> None:
        self.layer = layer
        self.reason = reason
        super().__init__(f"cannot export to NIR: layer '{layer}': {reason}")


class NIRImportError(ConversionError):
    """A NIR graph holds a node (or a structure) spikeforge cannot run; ``node`` names it."""

    def __init__(self, node: str, reason: str) -> None:
        self.node = node
        self.reason = reason
        super().__init__(f"cannot import NIR graph: node '{node}': {reason}")


def require_nir():
    """The ``nir`` package, or a clear error saying how to install it."""
    try:
        import nir  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise NIRUnavailableError(
            "NIR export and import need the optional packages nir and nirtorch: pip install nir nirtorch "
            "torch==2.13.0 (pin torch in the same command, or pip may replace the CPU build with a CUDA one)"
        ) from exc
    return nir
