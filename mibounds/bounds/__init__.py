"""Functional MI bounds: :mod:`mibounds.bounds.lower` (and upper bounds in later modules)."""

from mibounds.bounds.lower import dv, fmi, infonce, interpolated, js, mine, nwj, smile, tuba

__all__ = ["dv", "fmi", "infonce", "interpolated", "js", "mine", "nwj", "smile", "tuba"]
