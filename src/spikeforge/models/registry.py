"""A small registry: ``create_model(name, **kwargs)`` builds a registered network."""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory to the registry under ``name``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with keyword options."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; registered: {', '.join(sorted(_REGISTRY))}") from None
    return factory(**kwargs)


def list_models() -> list[str]:
    return sorted(_REGISTRY)
