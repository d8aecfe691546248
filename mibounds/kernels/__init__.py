"""Kernels behind the reductions: the dense reference lives in :mod:`mibounds.reductions`; the
streaming kernels for :class:`~mibounds.scores.SeparableScores` in
:mod:`mibounds.kernels.streaming`."""
