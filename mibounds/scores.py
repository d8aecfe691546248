r"""The two representations of critic scores, and the separable similarities.

Scores follow one convention everywhere: ``S[..., i, j] = T(x_i, y_j)``. Rows index x, columns
index y, positives sit on the diagonal; leading dimensions are batch dimensions.

* A dense tensor ``(..., N, M)`` (``M >= N``: columns after the N paired ones are extra
  negatives), or a :class:`DenseScores` that adds a :class:`~mibounds.pairing.Pairing`.
* A lazy :class:`SeparableScores` for separable critics ``T(x, y) = sim(g(x), h(y)) / tau + b``.
  Every bound accepts it; :meth:`SeparableScores.dense` materialises the matrix when needed.

Both carry the pairing (labels, excluded pairs): it belongs to the scores, not to the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mibounds import _checks, distributed
from mibounds.kernels import small as small_kernel
from mibounds.pairing import EXCLUDE, Pairing, PairLayout

__all__ = ["SIMILARITIES", "DenseScores", "SeparableScores", "pairwise_similarity"]

SIMILARITIES = ("dot", "cosine", "gaussian")


def pairwise_similarity(
    x: Tensor, y: Tensor, similarity: str = "dot", temperature: float | Tensor = 1.0
) -> Tensor:
    r"""Dense score matrix of a separable critic.

    .. math::

        S_{ij} = \frac{1}{\tau}\begin{cases}
            \langle x_i, y_j\rangle & \text{dot} \\
            \langle x_i / \|x_i\|, y_j / \|y_j\|\rangle & \text{cosine} \\
            -\|x_i - y_j\|^2 & \text{gaussian}
        \end{cases}

    The Gaussian case is the log of the kernel :math:`\exp(-\|x - y\|^2 / (2\sigma^2))` with
    :math:`\tau = 2\sigma^2`.

    Args:
        x: ``(..., N, d)`` features of the x samples.
        y: ``(..., M, d)`` features of the y samples (usually ``M = N``; one rank's rows
            against the gathered global batch have ``M > N``).
        similarity: ``"dot"``, ``"cosine"`` or ``"gaussian"``.
        temperature: positive float or scalar tensor :math:`\tau`.

    Returns:
        ``(..., N, M)`` scores, in the dtype of ``x``.

    Raises:
        ValueError: for shapes that disagree or an unknown similarity.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> pairwise_similarity(x, x, "gaussian")
        tensor([[ 0., -2.],
                [-2.,  0.]])
    """
    _checks.check_tensor("x", x, min_dim=2)
    _checks.check_tensor("y", y, min_dim=2)
    if x.shape[:-2] != y.shape[:-2]:
        raise ValueError(
            "x and y must agree on their leading dimensions (..., N, d) and (..., M, d), got "
            f"x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    _checks.check_same_last_dim("x", x, "y", y)
    sim = _checks.check_choice("similarity", similarity, SIMILARITIES)
    _checks.check_temperature("temperature", temperature)
    return _similarity(x, y, sim, temperature)


def _promote(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` and ``y`` in their common dtype (torch's promotion), so mixed inputs work on every
    path."""
    dt = torch.promote_types(x.dtype, y.dtype)
    return x.to(dt), y.to(dt)


def _similarity(x: Tensor, y: Tensor, sim: str, temperature: float | Tensor) -> Tensor:
    x, y = _promote(x, y)
    if sim == "cosine":
        x = F.normalize(x, dim=-1)
        y = F.normalize(y, dim=-1)
    if sim == "gaussian":
        # ||x - y||^2 = |x|^2 + |y|^2 - 2 x.y, clamped at 0 against rounding.
        sq = (x * x).sum(-1)[..., :, None] + (y * y).sum(-1)[..., None, :]
        s = (2 * (x @ y.transpose(-1, -2)) - sq).clamp_max(0)
    else:
        s = x @ y.transpose(-1, -2)
    return s / temperature


def _check_bias(bias: Any) -> Tensor | None:
    return None if bias is None else _bias_tensor(_checks.check_scalar("bias", bias))


@lru_cache(maxsize=16)
def _plain_layout(n: int) -> PairLayout:
    """The plain pairing laid out for ``n`` rows (each row's positive its own column)."""
    return PairLayout(n_paired=n)


def _bias_tensor(bias: float | Tensor | None) -> Tensor | None:
    """A checked bias as the scores hold it: a 0-d tensor. A Python float becomes float64,
    which keeps every digit and, as a 0-d tensor, does not promote the scores it is added to
    (float32 scores stay float32)."""
    if bias is None:
        return None
    if isinstance(bias, Tensor):  # a 0-d tensor as it is (no view, no autograd step)
        return bias if bias.dim() == 0 else bias.reshape(())
    return torch.tensor(float(bias), dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class SeparableScores:
    r"""Lazy scores of a separable critic: ``S[..., i, j] = sim(x[..., i, :], y[..., j, :]) / tau
    + bias``.

    Bounds that receive a :class:`SeparableScores` never need the dense matrix from the user:
    the streaming kernels use ``x`` and ``y`` directly, in O((N + M) d) memory.

    Args:
        x: ``(..., N, d)`` encoded x samples (the rows, or anchors).
        y: ``(..., M, d)`` encoded y samples (the columns, or candidates), ``M >= N``: the
            positive of row ``i`` is column ``i``, and columns ``N..M-1`` are extra negatives (a
            queue or memory bank), unless labels say otherwise.
        similarity: ``"dot"``, ``"cosine"`` or ``"gaussian"`` (see :func:`pairwise_similarity`).
        temperature: positive float or scalar tensor (it may require grad); a CLIP logit scale
            ``t`` is ``temperature = 1 / t``.
        gather: ``True`` or a process group to use the negatives of every rank
            (:mod:`mibounds.distributed`): ``x`` and ``y`` then hold this rank's ``n_local >= 1``
            pairs, and the bounds return the value of the concatenated batch. ``False``
            (default): this process's batch only.
        bias: an additive score offset (SigLIP's logit bias), float or scalar tensor that may
            require grad.
        labels: ``(N,)`` integer labels: row ``i`` and column ``j`` are positive iff their labels
            are equal (see :class:`~mibounds.pairing.Pairing`).
        y_labels: ``(M,)`` labels of the columns when they differ from ``labels``.
        exclude: ``"none"``, ``"self"`` (the pair ``(i, i)`` does not count: rows and columns
            are the same embeddings) or ``"batch"`` (each row against its own column and the
            extra columns only).

    Raises:
        TypeError: for non-tensor or integer inputs.
        ValueError: for mismatched shapes, ``N < 2``, ``M < N``, or a bad similarity,
            temperature, bias or pairing.

    Example:
        >>> x, y = torch.randn(4, 3), torch.randn(4, 3)
        >>> s = SeparableScores(x, y, similarity="cosine", temperature=0.5)
        >>> s.shape
        torch.Size([4, 4])
        >>> torch.allclose(s.dense(), pairwise_similarity(x, y, "cosine", 0.5))
        True
    """

    x: Tensor
    y: Tensor
    similarity: str = "dot"
    temperature: float | Tensor = 1.0
    gather: Any = False
    bias: float | Tensor | None = None
    labels: Tensor | None = None
    y_labels: Tensor | None = None
    exclude: str = "none"
    # decided once when the scores are built (see _carry); not arguments
    _group: Any = field(init=False, repr=False, compare=False)
    _layout: PairLayout = field(init=False, repr=False, compare=False)
    _counts: tuple[Tensor, Tensor] | None = field(init=False, repr=False, compare=False)
    _plain: bool = field(init=False, repr=False, compare=False)
    # the logit scale a loss was given (the temperature is its inverse), or None
    _scale: float | Tensor | None = field(init=False, default=None, repr=False, compare=False)
    # where the small-batch path reduces these scores, the names of x and y as the loss takes
    # them, and of its bias if it takes one (that path checks their values); None otherwise
    # (see _of_loss)
    _small: tuple[str, ...] | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        group = distributed.resolve_group(self.gather)
        _checks.check_tensor("x", self.x, min_dim=2)
        _checks.check_tensor("y", self.y, min_dim=2)
        if self.x.shape[:-2] != self.y.shape[:-2] or self.y.shape[-2] < self.x.shape[-2]:
            raise ValueError(
                "x and y must be (..., N, d) and (..., M, d) with the same leading dimensions "
                f"and M >= N (extra columns are extra negatives), got x {tuple(self.x.shape)} "
                f"and y {tuple(self.y.shape)}"
            )
        # one anchor is enough when it has negatives of its own: other ranks' rows, or extra
        # columns (a queue)
        min_n = 1 if self.gather or self.y.shape[-2] > self.x.shape[-2] else 2
        if self.x.shape[-2] < min_n or self.y.shape[-2] < 2:
            raise ValueError(
                f"x needs N >= {min_n} samples (and y at least 2), got x {tuple(self.x.shape)} "
                f"and y {tuple(self.y.shape)}"
            )
        _checks.check_same_last_dim("x", self.x, "y", self.y)
        object.__setattr__(
            self, "similarity", _checks.check_choice("similarity", self.similarity, SIMILARITIES)
        )
        _checks.check_temperature("temperature", self.temperature)
        object.__setattr__(self, "bias", _check_bias(self.bias))
        pairing = Pairing(self.labels, self.y_labels, self.exclude)
        layout = pairing.layout(self.x.shape[-2], self.y.shape[-2])  # lengths checked now
        object.__setattr__(self, "labels", pairing.labels)
        object.__setattr__(self, "y_labels", pairing.y_labels)
        object.__setattr__(self, "exclude", pairing.exclude)
        _checks.check_values("x", self.x)
        _checks.check_values("y", self.y)
        plain = pairing.plain and self.bias is None and self.x.shape[-2] == self.y.shape[-2]
        self._carry(group, layout.to(self.x.device), None, plain)

    def _carry(
        self, group: Any, layout: PairLayout, counts: tuple[Tensor, Tensor] | None, plain: bool
    ) -> None:
        """Keep what is decided once when the scores are built, for the batch that reduces
        them: the process group of ``gather`` (``None``: this process only), the pairing laid
        out for these rows and columns (labels on the features' device), where already known
        its per-row counts of positives and candidates, and whether the scores are plain
        (square, the positives on the diagonal, no bias: the batch's unweighted formulas)."""
        fields = {"_group": group, "_layout": layout, "_counts": counts, "_plain": plain}
        self.__dict__.update(fields)  # frozen: no setattr

    @classmethod
    def _of_loss(
        cls,
        min_n: int,
        features: dict[str, Any],
        similarity: str,
        *,
        temperature: tuple[str, Any] | None = None,
        logit_scale: tuple[str, Any] | None = None,
        logit_bias: tuple[str, Any] | None = None,
        shift: float = 0.0,
        gather: Any = False,
        labels: tuple[str, Any] | None = None,
        views: bool = False,
        extra: tuple[str, Any] | None = None,
        small: str | None = None,
    ) -> SeparableScores:
        """The scores of a drop-in loss, built from its call's arguments as its users pass
        them, checked once (:func:`mibounds._checks.check_loss_arguments`: every message names
        the argument as the loss takes it).

        The ``features`` (name -> tensor, one shape) are: with ``views``, the embeddings of
        several views of the same samples, concatenated, each row's positives its other views
        (SimCLR's pairing, the own pair excluded); with ``labels``, one set of embeddings
        compared with itself, the positives those of equal label (the own pair excluded);
        otherwise the rows and the columns (image-text pairs, positives on the diagonal), with
        ``extra`` (a queue, not differentiated) appended to the columns as negatives of every
        row, each row against its own column and those only (MoCo's pairing). The temperature
        is ``temperature``, or the inverse of ``logit_scale``; the bias is ``logit_bias`` plus
        ``shift``. ``gather`` is the loss's (checked by the loss).

        ``small`` names the loss of :mod:`mibounds.kernels.small` (``"cross_entropy"`` or
        ``"sigmoid"``) the caller reduces the scores with, whole, when that path covers them
        (one process, the plain pairing, and for the cross-entropy no bias): the path is
        decided here, once, and the features' values are then checked on its logits.
        """
        held_by = None
        if small is not None and not gather and labels is None and not views and extra is None:
            unbiased = shift == 0.0 and (logit_bias is None or logit_bias[1] is None)
            if small == "sigmoid" or unbiased:
                held_by = small_kernel.held_by(similarity, small)
        args = _checks.check_loss_arguments(
            min_n, features, temperature, logit_scale, logit_bias, labels, extra, held_by
        )
        feats, row_labels, exclude = args.features, args.labels, "none"
        if views:
            n = feats[0].shape[0]
            x = y = torch.cat(feats, dim=0)
            first = distributed.batch_layout(n, gather, x.device)[0] if gather else 0
            row_labels = (torch.arange(n, device=x.device) + first).repeat(len(feats))
            exclude = "self"
        elif row_labels is not None:
            x = y = feats[0]
            exclude = "self"
        elif args.extra is not None:
            x, y = feats
            y = torch.cat([y, args.extra.detach().to(y.dtype)], dim=0)
            exclude = "batch"
        else:
            x, y = feats
        bias = args.bias
        if shift != 0.0:
            bias = shift if bias is None else bias + shift
        n, m = x.shape[-2], y.shape[-2]
        # the batch weighs rows by the counts (the plain layout needs none: a bias alone)
        laid_plain = row_labels is None and exclude == "none"
        if laid_plain:
            layout, counts = _plain_layout(n), None
        else:
            on_device = None if row_labels is None else row_labels.to(x.device)
            layout = PairLayout(on_device, on_device, 0, EXCLUDE.index(exclude), n)
            counts = layout.counts(n, m, x.device)
        plain = laid_plain and bias is None and m == n
        group = None if gather is False or gather is None else distributed.resolve_group(gather)
        # the small path's names: the features', and the bias's where the loss takes one
        held = None
        if args.held:
            held = tuple(features)
            if logit_bias is not None and logit_bias[1] is not None:
                held = (*held, logit_bias[0])
        out = object.__new__(cls)
        out.__dict__.update(  # frozen: no setattr
            x=x, y=y, similarity=similarity, temperature=args.temperature, gather=gather,
            bias=_bias_tensor(bias), labels=row_labels, y_labels=None, exclude=exclude,
            _scale=None if logit_scale is None else logit_scale[1], _small=held,
        )  # fmt: skip
        out._carry(group, layout, counts, plain)
        return out

    @property
    def pairing(self) -> Pairing:
        """The :class:`~mibounds.pairing.Pairing` of rows and columns."""
        return Pairing(self.labels, self.y_labels, self.exclude)

    @property
    def shape(self) -> torch.Size:
        """Shape of the dense matrix, ``(..., N, M)``."""
        return torch.Size((*self.x.shape[:-1], self.y.shape[-2]))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the scores (``x`` and ``y`` promoted)."""
        return torch.promote_types(self.x.dtype, self.y.dtype)

    @property
    def device(self) -> torch.device:
        """The device of the scores (that of ``x``)."""
        return self.x.device

    def dense(self) -> Tensor:
        """Materialise the ``(..., N, M)`` score matrix."""
        s = _similarity(self.x, self.y, self.similarity, self.temperature)
        return s if self.bias is None else s + self.bias

    def diagonal(self) -> Tensor:
        """The scores of the own pairs ``S[..., i, i]`` in O(N d), shape ``(..., N)``."""
        x, y = _promote(self.x, self.y[..., : self.x.shape[-2], :])
        if self.similarity == "cosine":
            x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        if self.similarity == "gaussian":
            d = -((x - y) ** 2).sum(-1)
        else:
            d = (x * y).sum(-1)
        d = d / self.temperature
        return d if self.bias is None else d + self.bias


@dataclass(frozen=True, eq=False)
class DenseScores:
    r"""A dense score matrix with a :class:`~mibounds.pairing.Pairing` of its rows and columns.

    Args:
        scores: ``(..., N, M)`` scores, ``M >= N``.
        labels, y_labels, exclude: as in :class:`SeparableScores`.

    Raises:
        TypeError, ValueError: as for dense scores, and for a bad pairing.

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(6, 3), dim=-1)
        >>> s = DenseScores(z @ z.T / 0.5, labels=torch.tensor([0, 1, 2, 0, 1, 2]), exclude="self")
        >>> s.shape
        torch.Size([6, 6])
    """

    scores: Tensor
    labels: Tensor | None = None
    y_labels: Tensor | None = None
    exclude: str = "none"
    _layout: PairLayout = field(init=False, repr=False, compare=False)
    _plain: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _checks.check_scores("scores", self.scores, rectangular=True)
        pairing = Pairing(self.labels, self.y_labels, self.exclude)
        layout = pairing.layout(self.scores.shape[-2], self.scores.shape[-1])
        object.__setattr__(self, "labels", pairing.labels)
        object.__setattr__(self, "y_labels", pairing.y_labels)
        object.__setattr__(self, "exclude", pairing.exclude)
        # laid out once, for the batch that reduces them (labels on the scores' device)
        object.__setattr__(self, "_layout", layout.to(self.scores.device))
        square = self.scores.shape[-2] == self.scores.shape[-1]
        object.__setattr__(self, "_plain", pairing.plain and square)

    @property
    def pairing(self) -> Pairing:
        """The :class:`~mibounds.pairing.Pairing` of rows and columns."""
        return Pairing(self.labels, self.y_labels, self.exclude)

    @property
    def shape(self) -> torch.Size:
        """Shape of the matrix, ``(..., N, M)``."""
        return self.scores.shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the scores."""
        return self.scores.dtype

    def dense(self) -> Tensor:
        """The ``(..., N, M)`` score matrix."""
        return self.scores
