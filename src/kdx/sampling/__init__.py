"""Registered sample sources; importing this module registers them all."""
from kdx.sampling import downstream, mixture, noise, train  # noqa: F401
from kdx.sampling.base import Batch, PoolSource, Source

__all__ = ["Batch", "PoolSource", "Source"]
