"""Functional MI bounds: lower bounds in :mod:`mibounds.bounds.lower`, upper in
:mod:`mibounds.bounds.upper`."""

from mibounds.bounds.lower import dv, fmi, infonce, interpolated, js, mine, nwj, smile, tuba
from mibounds.bounds.upper import club, club_sample, l1out, nce_club, variational_upper_bound

__all__ = [
    "club",
    "club_sample",
    "dv",
    "fmi",
    "infonce",
    "interpolated",
    "js",
    "l1out",
    "mine",
    "nce_club",
    "nwj",
    "smile",
    "tuba",
    "variational_upper_bound",
]
