r"""Which pairs of a score matrix are positive, which are negative and which do not count.

Scores ``S[..., i, j]`` have ``N`` rows (anchors, the x samples) and ``M >= N`` columns
(candidates). By default the positive of row ``i`` is column ``i`` and every other column is a
negative; columns ``N..M-1`` are extra negatives (a queue, a memory bank). A
:class:`Pairing` changes that:

* ``labels``: row ``i`` and column ``j`` are a positive pair iff their labels are equal (a row
  may have several positives, or none: then it does not count);
* ``exclude="self"``: the pair ``(i, i)`` is neither positive nor negative (rows and columns are
  the same embeddings, as in NT-Xent and SupCon);
* ``exclude="batch"``: among the first ``N`` columns only row ``i``'s own column ``i`` counts
  (MoCo's form: each query against its own key and the queue).

:class:`PairLayout` is a pairing resolved for a given number of rows and columns. Kernels build
its masks one panel of rows at a time (O(panel x M) memory, never N x M), and the bounds read
the per-row counts of positives and candidates from it in O((N + M) log M), with no host
synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from mibounds._checks import check_labels as _check_labels

__all__ = ["EXCLUDE", "PairLayout", "Pairing"]

#: The exclusion rules, in the order of their integer codes in the kernels.
EXCLUDE = ("none", "self", "batch")


@dataclass(frozen=True, eq=False)
class Pairing:
    r"""The positive, negative and excluded pairs of a score matrix (see the module docs).

    Args:
        labels: ``(N,)`` integer labels of the rows; also of the columns when ``y_labels`` is
            not given (the scores must then be square).
        y_labels: ``(M,)`` integer labels of the columns.
        exclude: ``"none"``, ``"self"`` (the pair ``(i, i)`` does not count) or ``"batch"``
            (among the first N columns only column ``i`` counts for row ``i``; not with labels).

    Raises:
        TypeError: labels that are not integer tensors.
        ValueError: labels that are not one-dimensional, ``y_labels`` without ``labels``, an
            unknown ``exclude``, or ``exclude="batch"`` with labels.

    Example:
        >>> p = Pairing(labels=torch.tensor([0, 1, 0, 1]), exclude="self")
        >>> layout = p.layout(4, 4)
        >>> npos, ncand = layout.counts()  # per row: positives, and candidates
        >>> npos.tolist(), ncand.tolist()
        ([1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0])
    """

    labels: Tensor | None = None
    y_labels: Tensor | None = None
    exclude: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _check_labels("labels", self.labels))
        object.__setattr__(self, "y_labels", _check_labels("y_labels", self.y_labels))
        if self.y_labels is not None and self.labels is None:
            raise ValueError("y_labels needs labels for the rows too")
        if not isinstance(self.exclude, str) or self.exclude.lower() not in EXCLUDE:
            raise ValueError(f"exclude must be one of {EXCLUDE}, got {self.exclude!r}")
        object.__setattr__(self, "exclude", self.exclude.lower())
        if self.exclude == "batch" and self.labels is not None:
            raise ValueError("exclude='batch' (own key plus extra columns) cannot have labels")

    @property
    def plain(self) -> bool:
        """Whether this is the default pairing (no labels, nothing excluded)."""
        return self.labels is None and self.exclude == "none"

    def layout(self, n: int, m: int, offset: int = 0, n_paired: int | None = None) -> PairLayout:
        """This pairing for ``n`` rows and ``m`` columns.

        Args:
            n: rows. m: columns (``m >= n`` unless gathered).
            offset: column of row 0's own pair (one rank's rows in the global batch).
            n_paired: columns ``[0, n_paired)`` are the paired (in-batch) ones; default ``n``.

        Raises:
            ValueError: labels whose lengths do not match the rows and columns.
        """
        rl, cl = self.labels, self.y_labels
        if rl is not None:
            if cl is None:
                if n != m:
                    raise ValueError(
                        "one label vector needs square scores (rows and columns are the same "
                        f"samples); got {n} rows and {m} columns: pass y_labels for the columns"
                    )
                cl = rl
            if rl.shape[0] != n:
                raise ValueError(f"labels must have one entry per row ({n}), got {rl.shape[0]}")
            if cl.shape[0] != m:
                raise ValueError(
                    f"y_labels must have one entry per column ({m}), got {cl.shape[0]}"
                )
        return PairLayout(
            rl, cl, offset, EXCLUDE.index(self.exclude), n if n_paired is None else n_paired
        )


class PairLayout(NamedTuple):
    """A pairing resolved for given rows and columns: the arguments of the streaming kernels.

    Row ``i``'s own column is ``offset + i``. Positives: equal labels, or the own column when
    there are no labels. ``exclude``: 0 none, 1 the own column, 2 the paired columns
    ``[0, n_paired)`` other than the own column. Excluded pairs are never positive.

    Example:
        >>> layout = PairLayout(exclude=2, n_paired=2)  # own key plus two queue columns
        >>> layout.drop_mask(0, 2, 4, "cand", torch.device("cpu"))
        tensor([[False,  True, False, False],
                [ True, False, False, False]])
    """

    row_labels: Tensor | None = None
    col_labels: Tensor | None = None
    offset: int = 0
    exclude: int = 0
    n_paired: int = 0

    @property
    def plain(self) -> bool:
        """No labels and nothing excluded: the positive of each row is its own column."""
        return self.row_labels is None and self.exclude == 0

    def to(self, device: torch.device) -> PairLayout:
        """The same layout with its label vectors on ``device``."""
        if self.row_labels is None or self.col_labels is None:
            return self
        return self._replace(
            row_labels=self.row_labels.to(device), col_labels=self.col_labels.to(device)
        )

    def drop_mask(self, r0: int, r1: int, m: int, keep: str, device: torch.device) -> Tensor | None:
        """``(r1 - r0, m)`` mask of the entries of rows ``r0:r1`` outside the set ``keep``
        (``"cand"``: the candidates, ``"neg"``: the negatives, ``"pos"``: the positives), or
        ``None`` when nothing is dropped."""
        rows = torch.arange(r0, r1, device=device)[:, None]
        cols = torch.arange(m, device=device)[None, :]
        own = cols == rows + self.offset
        if self.row_labels is None:
            pos = own
        else:
            assert self.col_labels is not None
            pos = self.row_labels[r0:r1, None].to(device) == self.col_labels[None, :].to(device)
        excl = None
        if self.exclude == 1:
            excl = own
        elif self.exclude == 2:
            excl = (cols < self.n_paired) & ~own
        if keep == "cand":
            return excl
        if keep == "neg":
            return pos if excl is None else pos | excl
        return ~pos if excl is None else ~pos | excl

    def counts(
        self, n: int | None = None, m: int | None = None, device: torch.device | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per row, the number of positives and of candidates (positives and negatives), as
        float64 tensors ``(n,)``; from sorted labels in O((n + m) log m)."""
        if self.row_labels is not None:
            assert self.col_labels is not None
            n, m = self.row_labels.shape[0], self.col_labels.shape[0]
            device = self.row_labels.device
        assert n is not None and m is not None
        if self.offset == 0 and n <= m:  # every row has its own column
            has_own = torch.ones(n, dtype=torch.float64, device=device)
        else:
            own_col = torch.arange(n, device=device) + self.offset
            has_own = ((own_col >= 0) & (own_col < m)).double()
        if self.row_labels is None:
            npos = has_own.clone()
        else:
            assert self.col_labels is not None
            srt = torch.sort(self.col_labels).values
            rl = self.row_labels
            npos = (
                torch.searchsorted(srt, rl, right=True) - torch.searchsorted(srt, rl, right=False)
            ).double()
        if self.exclude == 1:
            if self.row_labels is None:
                npos = npos - has_own
            else:
                assert self.col_labels is not None
                own_col = torch.arange(n, device=device) + self.offset
                own = self.col_labels[own_col.clamp(0, m - 1)] == self.row_labels
                npos = npos - (own.double() * has_own)
            ncand = m - has_own
        elif self.exclude == 2:
            ncand = torch.full_like(has_own, float(m - self.n_paired)) + has_own
        else:
            ncand = torch.full_like(has_own, float(m))
        return npos, ncand

    def transposed(self, n: int, m: int) -> PairLayout:
        """The same pairing seen from the columns (for the column terms of symmetric bounds);
        ``exclude=2`` has no transposed form."""
        if self.exclude == 2:
            raise ValueError("exclude='batch' has no column-wise (symmetric) form")
        return PairLayout(self.col_labels, self.row_labels, -self.offset, self.exclude, m)
