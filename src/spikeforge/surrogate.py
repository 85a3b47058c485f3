"""Surrogate gradients for the Heaviside spike ``S = H(u)``, ``u = h − θ``.

In the forward pass a neuron fires with the exact step function; in the backward
pass ``dS/du`` is replaced by the derivative of a smooth stand-in ``f``. Each
surrogate is a small picklable class with two methods:

* ``smooth(u)`` — the smooth function ``f`` itself (used by tests and for plotting);
* ``derivative(u)`` — ``f'(u)``, the gradient the spiking layers use.

All four are normalized so that ``f`` rises from 0 to 1 (like ``H``):

=============  =====================================================  =======================
name           f(u)                                                   f'(u)
=============  =====================================================  =======================
ATan(α)        ½ + atan(π α u / 2) / π                                α / (2 (1 + (π α u / 2)²))
Sigmoid(α)     σ(α u)                                                 α σ(α u) (1 − σ(α u))
FastSigmoid(k) ½ + ½ · k u / (1 + k |u|)          (SuperSpike)        k / (2 (1 + k |u|)²)
Triangle(w)    piecewise quadratic, 0 below −w, 1 above w             max(0, 1 − |u|/w) / w
=============  =====================================================  =======================
"""

from __future__ import annotations

import math

import torch


class Surrogate:
    """Base class: a smooth stand-in for the Heaviside step."""

    def smooth(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative_(self, u: torch.Tensor) -> torch.Tensor:
        """``f'(u)`` written over ``u`` (a scratch buffer); saves memory passes in backward."""
        return self.derivative(u)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"surrogate parameter {name} must be a finite number > 0, got {value}")
    return value


class ATan(Surrogate):
    """Arc-tangent surrogate (SpikingJelly's default): ``f'(u) = α / (2 (1 + (παu/2)²))``."""

    def __init__(self, alpha: float = 2.0) -> None:
        self.alpha = _positive("alpha", alpha)

    def smooth(self, u: torch.Tensor) -> torch.Tensor:
        return 0.5 + torch.atan(math.pi / 2 * self.alpha * u) / math.pi

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * u).square())

    def derivative_(self, u: torch.Tensor) -> torch.Tensor:
        return u.mul_(math.pi / 2 * self.alpha).square_().add_(1).reciprocal_().mul_(self.alpha / 2)


class Sigmoid(Surrogate):
    """Logistic surrogate: ``f(u) = σ(αu)``, ``f'(u) = α σ(αu) (1 − σ(αu))``."""

    def __init__(self, alpha: float = 4.0) -> None:
        self.alpha = _positive("alpha", alpha)

    def smooth(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.alpha * u)

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.alpha * u)
        return self.alpha * s * (1 - s)


class FastSigmoid(Surrogate):
    """SuperSpike's fast sigmoid (Zenke & Ganguli 2018): ``f'(u) = k / (2 (1 + k|u|)²)``.

    ``f(u) = ½ + ½·ku/(1 + k|u|)``; ``k`` is the slope (snnTorch uses 25).
    """

    def __init__(self, slope: float = 25.0) -> None:
        self.slope = _positive("slope", slope)

    def smooth(self, u: torch.Tensor) -> torch.Tensor:
        k = self.slope
        return 0.5 + 0.5 * k * u / (1 + k * u.abs())

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        k = self.slope
        return (k / 2) / (1 + k * u.abs()).square()

    def derivative_(self, u: torch.Tensor) -> torch.Tensor:
        k = self.slope
        return u.abs_().mul_(k).add_(1).square_().reciprocal_().mul_(k / 2)


class Triangle(Surrogate):
    """Triangular (piecewise-linear) surrogate of half-width ``w``: ``f'(u) = max(0, 1 − |u|/w) / w``."""

    def __init__(self, width: float = 1.0) -> None:
        self.width = _positive("width", width)

    def smooth(self, u: torch.Tensor) -> torch.Tensor:
        w = self.width
        c = u.clamp(-w, w)
        rising = (c + w).square() / (2 * w * w)
        falling = 1 - (w - c).square() / (2 * w * w)
        return torch.where(c < 0, rising, falling)

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        w = self.width
        return (1 - u.abs() / w).clamp_(min=0) / w

    def derivative_(self, u: torch.Tensor) -> torch.Tensor:
        w = self.width
        return u.abs_().mul_(-1 / (w * w)).add_(1 / w).clamp_(min=0)


SURROGATES: dict[str, type[Surrogate]] = {
    "atan": ATan,
    "sigmoid": Sigmoid,
    "fast-sigmoid": FastSigmoid,
    "triangle": Triangle,
}


def get_surrogate(spec: str | Surrogate) -> Surrogate:
    """A surrogate from a name (``atan``, ``sigmoid``, ``fast-sigmoid``, ``triangle``) or as is."""
    if isinstance(spec, Surrogate):
        return spec
    try:
        return SURROGATES[str(spec).lower()]()
    except KeyError:
        raise ValueError(f"unknown surrogate {spec!r}; choose from {', '.join(SURROGATES)}") from None
