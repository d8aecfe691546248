r"""Drop-in contrastive losses: the exact values of the losses people train with, streamed.

Each module returns the **value of the loss it replaces** (the number the original library
prints, to float rounding), computed on :class:`~mibounds.scores.SeparableScores` by the
streaming kernels, so the ``N x M`` score matrix is never built. Each is an MI bound in
disguise; :meth:`mi` returns the estimate it implies.

.. list-table::
   :header-rows: 1

   * - module
     - replaces
     - MI read-out (``mi``)
   * - :class:`CLIPLoss`
     - OpenCLIP ``ClipLoss``
     - :math:`\log N - \mathcal{L}`
   * - :class:`SigLIPLoss`
     - OpenCLIP ``SigLipLoss``
     - NWJ at :math:`T = z + \log(N-1) + 1`
   * - :class:`NTXentLoss`
     - lightly ``NTXentLoss`` (two views; with or without memory bank)
     - :math:`\log(2N-1) - \mathcal{L}`
   * - :class:`PMLNTXentLoss`
     - pytorch-metric-learning ``NTXentLoss`` (embeddings and labels)
     - (per positive pair; no read-out)
   * - :class:`SupConLoss`
     - supervised contrastive ``L_out`` (pytorch-metric-learning ``SupConLoss``)
     - :math:`\log(N-1) - \mathcal{L}`
   * - :class:`MoCoLoss`
     - MoCo's query/key/queue cross-entropy
     - :math:`\log(K+1) - \mathcal{L}`

The InfoNCE family (CLIP, NT-Xent, SupCon, MoCo) are :func:`mibounds.infonce` with the pairing of
the scores set accordingly (rectangular candidates, labels, excluded self-pairs): the loss is
:math:`\log C - I_\mathrm{NCE}` with :math:`C` candidates per anchor, so the estimate is
:math:`\log C - \mathcal{L}` and can never exceed :math:`\log C`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibounds import _checks
from mibounds._dtypes import upcast
from mibounds.bounds.lower import infonce, nwj
from mibounds.distributed import GroupArg, all_gather, batch_layout
from mibounds.kernels.panels import get_memory_budget, panel_rows
from mibounds.kernels.rows import row_terms
from mibounds.pairing import PairLayout, _check_labels
from mibounds.reductions import SeparableBatch, batch_statistics, separable_rows
from mibounds.scores import SeparableScores

__all__ = [
    "CLIPLoss",
    "MemoryQueue",
    "MoCoLoss",
    "NTXentLoss",
    "PMLNTXentLoss",
    "SigLIPLoss",
    "SupConLoss",
]


def _scale(name: str, logit_scale: Any) -> Tensor | float:
    """A positive, finite logit scale (float or scalar tensor) whose inverse, the temperature,
    is finite too; errors name the argument as the caller passed it."""
    if isinstance(logit_scale, Tensor):
        _checks.check_tensor(name, logit_scale)
        if logit_scale.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(logit_scale.shape)}")
        if not _checks.validating():
            return logit_scale
        value = float(logit_scale.detach())
        inverse = float((1 / logit_scale.detach()).float())
    else:
        if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)):
            raise TypeError(
                f"{name} must be a float or a scalar tensor, got {type(logit_scale).__name__}"
            )
        value = float(logit_scale)
        inverse = 1.0 / value if value > 0 else math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    if not math.isfinite(inverse):
        raise ValueError(
            f"{name}={value:g} is too small: the temperature 1 / {name} overflows "
            f"{logit_scale.dtype if isinstance(logit_scale, Tensor) else 'float'}"
        )
    return logit_scale


def _bias(name: str, logit_bias: Any) -> Tensor | float:
    """A finite scalar bias (float or one-element tensor), named as the caller passed it."""
    if isinstance(logit_bias, Tensor):
        _checks.check_tensor(name, logit_bias)
        if logit_bias.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(logit_bias.shape)}")
        _checks.check_values(name, logit_bias)
        return logit_bias
    if isinstance(logit_bias, bool) or not isinstance(logit_bias, (int, float)):
        raise TypeError(
            f"{name} must be a float or a scalar tensor, got {type(logit_bias).__name__}"
        )
    return _checks.check_real(name, logit_bias)


def _features(name: str, t: Any, min_n: int = 2) -> Tensor:
    """``(N, d)`` features with ``N >= min_n`` rows and finite values (checked while values
    are validated), named as the caller passed them."""
    _checks.check_tensor(name, t, min_dim=2)
    if t.dim() != 2:
        raise ValueError(f"{name} must be (N, d) features, got shape {tuple(t.shape)}")
    if t.shape[0] < min_n:
        raise ValueError(
            f"{name} needs at least {min_n} samples (rows) for a contrastive loss, got shape "
            f"{tuple(t.shape)}"
        )
    _checks.check_values(name, t)
    return t


def _openclip_group(
    owner: str,
    gather: GroupArg,
    world_size: Any,
    rank: Any,
    local_loss: bool = False,
    use_horovod: bool = False,
) -> GroupArg:
    """The ``gather`` of a loss built with OpenCLIP's constructor arguments: ``world_size > 1``
    gathers the negatives of every rank (the loss of the global batch, OpenCLIP's
    ``local_loss=False``); the rank comes from ``torch.distributed``."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"{owner}: world_size must be an int >= 1, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"{owner}: rank must be an int in [0, {world_size}), got {rank!r}")
    if use_horovod:
        raise ValueError(
            f"{owner}: use_horovod=True is not supported: the negatives of other ranks come "
            "from torch.distributed (world_size > 1, or gather=True)"
        )
    if not isinstance(local_loss, bool):
        raise TypeError(f"{owner}: local_loss must be a bool, got {type(local_loss).__name__}")
    if world_size > 1 and not gather:
        return True
    return gather


def _output(loss: Tensor, output_dict: bool) -> Tensor | dict[str, Tensor]:
    """OpenCLIP's return convention: ``{"contrastive_loss": loss}`` with ``output_dict``."""
    if not isinstance(output_dict, bool):
        raise TypeError(f"output_dict must be a bool, got {type(output_dict).__name__}")
    return {"contrastive_loss": loss} if output_dict else loss


def _image_text(
    image_features: Any,
    text_features: Any,
    logit_scale: Any,
    logit_bias: Any,
    gather: GroupArg,
    shift: float = 0.0,
) -> SeparableScores:
    """OpenCLIP's operands, checked and named as its losses take them, as the scores
    ``t u.v + b`` (plus ``shift``, added to every logit)."""
    u = _features("image_features", image_features, _min_rows(gather))
    v = _features("text_features", text_features, _min_rows(gather))
    _same_shape("image_features", u, "text_features", v)
    t = _scale("logit_scale", logit_scale)
    b = None if logit_bias is None else _bias("logit_bias", logit_bias)
    if shift != 0.0:
        b = shift if b is None else b + shift
    return SeparableScores(u, v, "dot", 1 / t, bias=b, gather=gather)


def _min_rows(gather: Any) -> int:
    """Rows a rank needs: one with negatives from other ranks, else two."""
    return 1 if gather else 2


def _same_shape(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape (N, d), got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


_REDUCTIONS = ("mean", "sum", "none")


def _reduction(owner: str, reduction: Any) -> str:
    """``"mean"`` (the loss), ``"sum"`` or ``"none"`` (one loss per anchor)."""
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{owner}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _anchor_losses(s: SeparableScores, symmetric: bool = False) -> Tensor:
    r"""Per anchor, the cross-entropy of the InfoNCE family, streamed: the log-sum-exp over its
    candidates minus the mean score of its positives (0 for an anchor without a positive),
    ``(N,)``; with ``symmetric``, the average of the row's and the column's."""
    st = separable_rows(s)
    assert st is not None
    terms = st.nce_rows(symmetric)
    return torch.where(st.npos > 0, torch.log(st.ncand).to(terms.dtype) - terms, 0.0)


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    return losses.sum(-1) if reduction == "sum" else losses


def _rank_rows(rows: Tensor, group: GroupArg) -> tuple[Tensor, Tensor, Tensor, int]:
    """Every rank's ``rows`` (gathered with gradient), the global ids of this rank's rows and
    of all rows (the labels that pair them), and the global N."""
    first, total = batch_layout(rows.shape[0], group, rows.device)
    gathered = all_gather(rows, group)
    ids = torch.arange(rows.shape[0], device=rows.device) + first
    return gathered, ids, torch.arange(total, device=rows.device), total


def _local_scores(
    rows: Tensor, cols: Tensor, temperature: Any, bias: Any, group: GroupArg
) -> tuple[SeparableScores, int]:
    """This rank's ``rows`` against every rank's ``cols`` (the rank-local loss of OpenCLIP and
    lightly), each row's positive its own pair in the global batch; and the global N."""
    gathered, ids, all_ids, total = _rank_rows(cols, group)
    s = SeparableScores(rows, gathered, "dot", temperature, bias=bias, labels=ids, y_labels=all_ids)
    return s, total


class CLIPLoss(nn.Module):
    r"""OpenCLIP's ``ClipLoss``: symmetric cross-entropy of image-text logits, streamed.

    .. math::

        \mathcal{L} = \frac{1}{2N}\sum_i \Big[-\log\frac{e^{t\,u_i\cdot v_i}}{\sum_j e^{t\,u_i
        \cdot v_j}} - \log\frac{e^{t\,u_i\cdot v_i}}{\sum_j e^{t\,u_j\cdot v_i}}\Big]
        = \log N - I_\mathrm{NCE}^\mathrm{sym},

    with :math:`t` the logit scale (features are used as given: OpenCLIP normalises them in the
    model). Equal to ``open_clip.ClipLoss()(image_features, text_features, logit_scale)``.

    Args:
        local_loss: OpenCLIP's rank-local loss: with ``world_size > 1`` (or ``gather``), each
            rank returns the loss of its own images against every rank's texts and of its own
            texts against every rank's images. ``False``: every rank returns the loss of the
            global batch. The gradients after DDP's averaging are the same either way.
        gather_with_grad: accepted for OpenCLIP's signature; the gathered negatives always
            carry their gradient here.
        cache_labels: accepted for OpenCLIP's signature (no label tensor is built).
        rank: this process's rank, as OpenCLIP takes it (``torch.distributed`` supplies it).
        world_size: ``> 1`` gathers the negatives of every rank (as ``gather=True``).
        use_horovod: ``True`` is refused with a ``ValueError`` (torch.distributed only).
        gather: ``True`` or a process group: negatives from every rank, like OpenCLIP's
            ``gather_with_grad=True, local_loss=False``; every rank returns the loss of the
            global batch (see :mod:`mibounds.distributed`).
        reduction: ``"mean"`` (OpenCLIP's loss), ``"sum"``, or ``"none"``: one loss per pair
            ``i``, the average of image ``i``'s and text ``i``'s cross-entropies, ``(N,)``
            (streamed; one process only).

    Example:
        >>> u = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
        >>> loss = CLIPLoss()(u, u, torch.tensor(10.0))
        >>> loss.shape
        torch.Size([])

    References:
        Radford et al. "Learning Transferable Visual Models From Natural Language Supervision."
        ICML 2021. van den Oord, Li, Vinyals. "Representation Learning with Contrastive
        Predictive Coding." arXiv 2018.
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        gather: GroupArg = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.gather = _openclip_group("CLIPLoss", gather, world_size, rank, local_loss, use_horovod)
        #: return this rank's own loss (OpenCLIP's ``local_loss=True``)
        self.local = local_loss and bool(self.gather)
        self.reduction = _reduction("CLIPLoss", reduction)

    def _scores(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Any, logit_bias: Any
    ) -> SeparableScores:
        return _image_text(image_features, text_features, logit_scale, logit_bias, self.gather)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: float | Tensor,
        logit_bias: float | Tensor | None = None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """The loss (to minimise), in the features' dtype.

        Args:
            image_features: ``(N, d)`` image embeddings (normalised by the model).
            text_features: ``(N, d)`` text embeddings.
            logit_scale: the scale :math:`t` (``model.logit_scale.exp()``), a positive float
                or scalar tensor.
            logit_bias: an optional scalar added to every logit (CLIP models built with
                ``init_logit_bias``); it shifts every logit alike, so the loss does not change.
            output_dict: return ``{"contrastive_loss": loss}``, as OpenCLIP's training loop
                expects from ``loss(**model_out, output_dict=True)``.
        """
        s = self._scores(image_features, text_features, logit_scale, logit_bias)
        if self.local:
            loss = self._local_loss(s)
        elif self.reduction == "mean":
            loss = torch.log(_global_rows(s)) - infonce(s, symmetric=True)
        else:
            loss = _reduce(_anchor_losses(s, symmetric=True), self.reduction)
        return _output(loss.to(image_features.dtype), output_dict)

    def _local_loss(self, s: SeparableScores) -> Tensor:
        """OpenCLIP's ``local_loss=True``: this rank's images against every rank's texts and
        its texts against every rank's images, averaged."""
        images, n = _local_scores(s.x, s.y, s.temperature, s.bias, self.gather)
        texts, _ = _local_scores(s.y, s.x, s.temperature, s.bias, self.gather)
        if self.reduction != "mean":
            both = 0.5 * (_anchor_losses(images) + _anchor_losses(texts))
            return _reduce(both, self.reduction)
        return math.log(n) - 0.5 * (infonce(images) + infonce(texts))

    def mi(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: float | Tensor,
        logit_bias: float | Tensor | None = None,
    ) -> Tensor:
        r"""The symmetric InfoNCE estimate :math:`\log N - \mathcal{L}` in nats.

        A lower bound on the MI between the two views' representations, for monitoring:
        it is negative early in training (before the critic beats chance) and capped by the
        log of the number of candidates; it carries a gradient, so ``.detach()`` (or
        ``.item()``) it for logging.
        """
        s = self._scores(image_features, text_features, logit_scale, logit_bias)
        return infonce(s, symmetric=True)


class SigLIPLoss(nn.Module):
    r"""OpenCLIP's ``SigLipLoss``: a binary classifier of every image-text pair, streamed.

    With logits :math:`z_{ij} = t\,u_i\cdot v_j + b` and labels :math:`+1` on the diagonal,
    :math:`-1` elsewhere:

    .. math::

        \mathcal{L} = -\frac{1}{N}\sum_{i,j}\log\sigma(\pm z_{ij})
        = \frac1N\sum_i \mathrm{softplus}(-z_{ii}) + \frac1N\sum_{i\ne j}\mathrm{softplus}(z_{ij}).

    Equal to ``open_clip.SigLipLoss()(image_features, text_features, logit_scale, logit_bias)``
    (one process; negatives summed per row).

    Args:
        cache_labels: accepted for OpenCLIP's signature (no label tensor is built).
        rank: this process's rank, as OpenCLIP takes it (``torch.distributed`` supplies it).
        world_size: ``> 1``: as OpenCLIP, each rank returns its own share of the loss, its
            images against the texts of every rank, divided by its own number of images.
        dist_impl: OpenCLIP's exchange scheme (``"bidir"``, ``"shift"``, ``"reduce"``,
            ``"gather"`` or ``None``); accepted, the exchange is always a gather here.
        gather: ``True`` or a process group: every rank's texts are negatives of every image;
            each rank returns the loss of the global batch, divided by the global N (the
            gradients after DDP's averaging are those of the rank-local loss).
        reduction: ``"mean"`` (OpenCLIP's loss), ``"sum"``, or ``"none"``: one loss per image
            :math:`i`, :math:`\mathrm{softplus}(-z_{ii}) + \sum_{j\ne i}\mathrm{softplus}(z_{ij})`,
            ``(N,)``, whose mean is the loss (streamed; one process only).

    **MI read-out.** The loss is minimised by :math:`\sigma(z) = p/(p + (N-1)q)` for the joint
    :math:`p` and product :math:`q`, i.e. :math:`z^* = \log r(u, v) - \log(N-1)` with the density
    ratio :math:`r = p/q`. So :math:`T = z + \log(N-1) + 1` is NWJ's optimal critic
    :math:`1 + \log r`, and :meth:`mi` reports :func:`mibounds.nwj` at that :math:`T`: a lower
    bound on the MI for any logits, tight at the optimum.

    Example:
        >>> u = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
        >>> SigLIPLoss()(u, u, torch.tensor(10.0), torch.tensor(-10.0)).shape
        torch.Size([])

    References:
        Zhai, Mustafa, Kolesnikov, Beyer. "Sigmoid Loss for Language Image Pre-Training."
        ICCV 2023. Nguyen, Wainwright, Jordan. IEEE Trans. Inf. Theory 2010.
    """

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: str | None = None,
        *,
        gather: GroupArg = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        impls = (None, "bidir", "shift", "reduce", "gather")
        if dist_impl not in impls:
            raise ValueError(f"SigLIPLoss: dist_impl must be one of {impls}, got {dist_impl!r}")
        self.gather = _openclip_group("SigLIPLoss", gather, world_size, rank)
        #: return this rank's own share (OpenCLIP's SigLipLoss with ``world_size > 1``)
        self.local = world_size > 1 and not gather
        self.reduction = _reduction("SigLIPLoss", reduction)

    def _scores(self, u: Any, v: Any, logit_scale: Any, logit_bias: Any, shift: float = 0.0):
        return _image_text(u, v, logit_scale, logit_bias, self.gather, shift)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: float | Tensor,
        logit_bias: float | Tensor | None = None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """The loss (to minimise), in the features' dtype.

        Args:
            image_features: ``(N, d)`` image embeddings (normalised by the model).
            text_features: ``(N, d)`` text embeddings.
            logit_scale: the scale :math:`t`, a positive float or scalar tensor.
            logit_bias: the bias :math:`b` (a float or scalar tensor), or ``None`` for logits
                without one, as OpenCLIP computes them.
            output_dict: return ``{"contrastive_loss": loss}`` (OpenCLIP's training loop).
        """
        s = self._scores(image_features, text_features, logit_scale, logit_bias)
        n_columns = None
        if self.local:  # this rank's images against every rank's texts
            s, n_columns = _local_scores(s.x, s.y, s.temperature, s.bias, self.gather)
        if self.reduction != "mean":
            rows = separable_rows(s)
            assert rows is not None
            losses = rows.row_terms("pos", "softplus-neg") + rows.row_terms("neg", "softplus")
            loss = _reduce(losses, self.reduction)
            return _output(loss.to(image_features.dtype), output_dict)
        st = batch_statistics(s, s.gather)
        assert st is not None
        _, negatives = st.offdiag_means("softplus")
        loss = st.joint("softplus-neg") + ((n_columns or st.n) - 1) * negatives
        return _output(loss.to(image_features.dtype), output_dict)

    def mi(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: float | Tensor,
        logit_bias: float | Tensor | None = None,
    ) -> Tensor:
        r"""NWJ at :math:`T = z + \log(N-1) + 1`, in nats (see the class documentation).

        A lower bound on the MI between the two views' representations, for monitoring:
        it is negative early in training (before the critic beats chance) and capped by the
        log of the number of candidates; it carries a gradient, so ``.detach()`` (or
        ``.item()``) it for logging.
        """
        s = self._scores(image_features, text_features, logit_scale, logit_bias)
        shift = math.log(float(_global_rows(s)) - 1) + 1
        return nwj(self._scores(image_features, text_features, logit_scale, logit_bias, shift))


def _global_rows(s: SeparableScores) -> Tensor:
    """The number of rows of the (gathered) batch, as a tensor of the features' dtype."""
    n = s.x.shape[-2]
    if s.gather:
        n = batch_layout(n, s.gather, s.x.device)[1]
    return torch.tensor(float(n), dtype=upcast(s.x).dtype, device=s.x.device)


def _two_views(out0: Any, out1: Any, min_n: int) -> tuple[Tensor, Tensor]:
    a = _features("out0", out0, min_n)
    b = _features("out1", out1, min_n)
    _same_shape("out0", a, "out1", b)
    return a, b


class NTXentLoss(nn.Module):
    r"""SimCLR's NT-Xent loss, as lightly's ``NTXentLoss`` (without memory bank), streamed.

    The :math:`2N` embeddings :math:`z = (z^{(0)}, z^{(1)})` of two views are compared by cosine
    similarity over a temperature :math:`\tau`; each is an anchor whose positive is its other
    view and whose negatives are the other :math:`2N - 2` embeddings (the self-pair is
    excluded):

    .. math::

        \mathcal{L} = \frac{1}{2N}\sum_{a=1}^{2N} -\log
        \frac{e^{\cos(z_a, z_{a^+})/\tau}}{\sum_{k \ne a} e^{\cos(z_a, z_k)/\tau}}
        = \log(2N-1) - I_\mathrm{NCE}.

    This is :func:`mibounds.infonce` on ``SeparableScores(z, z, "cosine", tau,
    labels=[0..N-1, 0..N-1], exclude="self")``. Equal to ``lightly.loss.NTXentLoss(temperature)
    (out0, out1)`` and to pytorch-metric-learning's ``NTXentLoss`` on the same pairs.

    **Memory bank** (lightly's MoCo recipe, ``memory_bank_size=K`` or ``(K, d)``): as lightly
    does, the views are normalised, each ``out0`` row is an anchor whose positive is its
    ``out1`` row and whose negatives are the bank's K entries; the bank starts as K random unit
    vectors (drawn from torch's global generator on the first call), and after each call that
    needs a gradient (``out0.requires_grad``, in training mode) the normalised ``out1`` rows
    replace its oldest entries, the rows past its end dropped (lightly's order). Unlike
    :class:`MoCoLoss` with a :class:`MemoryQueue` (the paper's recipe: features as given, an
    empty queue at first, every key kept), this is lightly's loss to the last detail.

    Args:
        temperature: :math:`\tau > 0` (lightly's default 0.5).
        memory_bank_size: 0 (no bank, SimCLR), a bank size K, or ``(K, d)``.
        gather_distributed: as lightly, negatives from every rank, and each rank returns the
            loss of its own 2n anchors against the 2N embeddings of all ranks. Not with a
            memory bank.
        gather: ``True`` or a process group: negatives from every rank, and every rank
            returns the loss of the global batch (the gradients after DDP's averaging are
            those of the rank-local loss).
        reduction: ``"mean"`` (lightly's loss), ``"sum"``, or ``"none"``: one loss per anchor,
            ``(2N,)`` (the ``out0`` rows, then the ``out1`` rows), or ``(N,)`` with a memory
            bank (streamed; one process only).

    pytorch-metric-learning's ``NTXentLoss`` takes ``(embeddings, labels)`` instead of two
    views, with a temperature of 0.07: that is :class:`PMLNTXentLoss`.

    Example:
        >>> z0, z1 = torch.randn(8, 4), torch.randn(8, 4)
        >>> NTXentLoss(temperature=0.5)(z0, z1).shape
        torch.Size([])
        >>> NTXentLoss(0.5, memory_bank_size=(32, 4))(z0, z1).shape
        torch.Size([])

    References:
        Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of Visual
        Representations." ICML 2020.
    """

    bank: Tensor
    bank_ptr: Tensor

    def __init__(
        self,
        temperature: float | Tensor = 0.5,
        memory_bank_size: int | tuple[int, int] = 0,
        gather_distributed: bool = False,
        *,
        gather: GroupArg = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _checks.check_temperature("temperature", temperature)
        self.temperature = temperature
        self.reduction = _reduction("NTXentLoss", reduction)
        if not isinstance(gather_distributed, bool):
            raise TypeError(
                f"gather_distributed must be a bool, got {type(gather_distributed).__name__}"
            )
        self.gather = gather or gather_distributed
        #: return this rank's own loss (lightly's ``gather_distributed=True``)
        self.local = gather_distributed and not gather
        self.bank_size, dim = _bank_size(memory_bank_size)
        if self.bank_size and self.gather:
            raise ValueError(
                "NTXentLoss: a memory bank with gather_distributed=True (or gather) is not "
                "supported: the bank's entries are the negatives"
            )
        empty = torch.zeros(0, 0) if dim is None else _random_bank(self.bank_size, dim)
        self.register_buffer("bank", empty, persistent=False)
        self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long), persistent=False)

    def _scores(self, out0: Any, out1: Any) -> SeparableScores:
        a, b = _two_views(out0, out1, 1)  # 2N >= 2 embeddings from one pair
        n = a.shape[0]
        z = torch.cat([a, b], dim=0)
        first = 0
        if self.gather:  # pair labels must be unique over the ranks
            first = batch_layout(n, self.gather, a.device)[0]
        labels = (torch.arange(n, device=a.device) + first).repeat(2)
        return SeparableScores(
            z, z, "cosine", self.temperature, gather=self.gather, labels=labels, exclude="self"
        )

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        """The loss (to minimise), in the features' dtype.

        Args:
            out0: ``(N, d)`` embeddings of the first views.
            out1: ``(N, d)`` embeddings of the second views (row ``i`` is the other view of
                ``out0`` row ``i``).
        """
        if isinstance(out1, Tensor) and out1.dim() == 1 and not out1.is_floating_point():
            raise TypeError(
                f"NTXentLoss takes two views (out0, out1), as lightly's does; out1 is a "
                f"{tuple(out1.shape)} tensor of {out1.dtype} labels, the call of "
                "pytorch-metric-learning's NTXentLoss(embeddings, labels): use "
                "mibounds.contrastive.PMLNTXentLoss for that call"
            )
        if self.bank_size:
            return self._bank_loss(out0, out1)
        s = self._rank_scores(out0, out1) if self.local else self._scores(out0, out1)
        if self.reduction != "mean":
            return _reduce(_anchor_losses(s), self.reduction).to(out0.dtype)
        if self.local:
            return (math.log(s.y.shape[0] - 1) - infonce(s)).to(out0.dtype)
        return (torch.log(_global_rows(s) - 1) - infonce(s)).to(out0.dtype)

    def _rank_scores(self, out0: Any, out1: Any) -> SeparableScores:
        """lightly's ``gather_distributed``: this rank's 2n anchors against the 2N embeddings
        of every rank (this rank's first, so that each anchor's own column is excluded)."""
        a, b = _two_views(out0, out1, 1)
        all_a, ids, all_ids, _ = _rank_rows(a, self.gather)
        all_b = all_gather(b, self.gather)
        others = (all_ids < ids[0]) | (all_ids > ids[-1])
        cols = torch.cat([a, b, all_a[others], all_b[others]])
        row_ids = torch.cat([ids, ids])
        col_ids = torch.cat([row_ids, all_ids[others], all_ids[others]])
        return SeparableScores(
            torch.cat([a, b]), cols, "cosine", self.temperature, labels=row_ids,
            y_labels=col_ids, exclude="self",
        )  # fmt: skip

    def _bank_scores(self, out0: Any, out1: Any, update: bool) -> SeparableScores:
        """The anchors ``out0`` against their ``out1`` rows and the bank's entries (held
        before this call), all normalised; with ``update``, the bank is then updated as lightly
        updates it."""
        a, b = _two_views(out0, out1, 1)
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        if self.bank.numel() == 0:
            self.bank = _random_bank(self.bank_size, a.shape[1]).to(a.device)
        if self.bank.shape[1] != a.shape[1]:
            raise ValueError(
                f"out0 must have {self.bank.shape[1]} features to match the memory bank, got "
                f"shape {tuple(a.shape)}"
            )
        negatives = self.bank.clone()
        if update and a.requires_grad and self.training:
            self._enqueue(b.detach())
        candidates = torch.cat([b, negatives.to(b.dtype)], dim=0)
        return SeparableScores(a, candidates, "dot", self.temperature, exclude="batch")

    def _bank_loss(self, out0: Tensor, out1: Tensor) -> Tensor:
        s = self._bank_scores(out0, out1, update=True)
        if self.reduction != "mean":
            return _reduce(_anchor_losses(s), self.reduction).to(out0.dtype)
        return (math.log(self.bank_size + 1) - infonce(s)).to(out0.dtype)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """lightly's order: from the pointer on; a batch that runs past the end is cut there
        and the pointer goes back to 0."""
        size, ptr = self.bank_size, int(self.bank_ptr)
        if ptr + keys.shape[0] >= size:
            self.bank[ptr:] = keys[: size - ptr].to(self.bank.dtype)
            self.bank_ptr.fill_(0)
        else:
            self.bank[ptr : ptr + keys.shape[0]] = keys.to(self.bank.dtype)
            self.bank_ptr.fill_(ptr + keys.shape[0])

    def mi(self, out0: Tensor, out1: Tensor) -> Tensor:
        r"""The InfoNCE estimate :math:`\log(2N-1) - \mathcal{L}` in nats.

        A lower bound on the MI between the two views' representations, for monitoring:
        it is negative early in training (before the critic beats chance) and capped by the
        log of the number of candidates; it carries a gradient, so ``.detach()`` (or
        ``.item()``) it for logging.
        """
        if self.bank_size:  # reading the estimate leaves the bank as it is
            return infonce(self._bank_scores(out0, out1, update=False))
        return infonce(self._scores(out0, out1))


def _bank_size(size: Any) -> tuple[int, int | None]:
    """lightly's ``memory_bank_size``: ``K`` (the feature size comes with the first batch) or
    ``(K, d)``."""
    if isinstance(size, tuple) and len(size) == 2:
        k, d = size
        _checks.check_positive_int("memory_bank_size[0]", k, minimum=1)
        _checks.check_positive_int("memory_bank_size[1]", d, minimum=1)
        return k, d
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(
            f"memory_bank_size must be an int >= 0 or a (size, dim) tuple, got {size!r}"
        )
    return size, None


def _random_bank(size: int, dim: int) -> Tensor:
    """``size`` random unit vectors of ``dim`` features (lightly's initial bank)."""
    return F.normalize(torch.randn(dim, size), dim=0).T.contiguous()


class SupConLoss(nn.Module):
    r"""The supervised contrastive loss :math:`\mathcal{L}_\mathrm{out}` of Khosla et al., streamed.

    On cosine similarities over a temperature, :math:`s_{ak} = \cos(z_a, z_k)/\tau`, for each
    anchor :math:`a` with at least one positive :math:`P(a) = \{p \ne a: y_p = y_a\}`:

    .. math::

        \ell_a = \frac{1}{|P(a)|}\sum_{p\in P(a)} -\log\frac{e^{s_{ap}}}{\sum_{k\ne a} e^{s_{ak}}},
        \qquad \mathcal{L} = \operatorname{mean}_{a:\,|P(a)|>0} \ell_a
        = \log(N - 1) - I_\mathrm{NCE}.

    Anchors without positives do not count. This is :func:`mibounds.infonce` on
    ``SeparableScores(z, z, "cosine", tau, labels=labels, exclude="self")``, and what
    pytorch-metric-learning's ``SupConLoss(temperature)`` computes, with its call
    ``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``:

    * ``ref_emb``, ``ref_labels`` (a cross-batch memory): the anchors are ``embeddings``, the
      candidates every row of ``ref_emb`` (none excluded), the positives those with an equal
      label; streamed as ``SeparableScores(z, ref_emb, "cosine", tau, labels=labels,
      y_labels=ref_labels)``.
    * ``indices_tuple`` (a miner's ``(a, p, n)`` triplets or ``(a1, p, a2, n)`` pairs): the
      positives of anchor ``a`` are the listed pairs ``(a, p)``, its candidates the listed
      positive and negative pairs (each counted once), computed on the listed pairs only.

    Args:
        temperature: :math:`\tau > 0` (default 0.1, as pytorch-metric-learning's).
        gather: ``True`` or a process group: negatives from every rank.
        reduction: ``"mean"`` (the loss), ``"sum"``, or ``"none"``: one loss per anchor,
            ``(N,)``, 0 for an anchor without a positive (streamed; one process only).

    Example:
        >>> z = torch.randn(8, 4)
        >>> SupConLoss(0.1)(z, torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])).shape
        torch.Size([])

    References:
        Khosla et al. "Supervised Contrastive Learning." NeurIPS 2020.
    """

    def __init__(
        self,
        temperature: float | Tensor = 0.1,
        *,
        gather: GroupArg = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _checks.check_temperature("temperature", temperature)
        self.temperature = temperature
        self.gather = gather
        self.reduction = _reduction("SupConLoss", reduction)

    def _scores(
        self, embeddings: Any, labels: Any, ref_emb: Any = None, ref_labels: Any = None
    ) -> SeparableScores:
        if isinstance(embeddings, Tensor) and embeddings.dim() == 3:
            b, v, d = embeddings.shape
            raise ValueError(
                f"embeddings must be (N, d) features, got shape {(b, v, d)}: for the SupCon "
                f"paper's [batch, n_views, dim] features, pass torch.cat(embeddings.unbind(1)) "
                f"(shape ({b * v}, {d})) and labels.repeat({v}) (shape ({b * v},))"
            )
        if ref_emb is None:
            z = _features("embeddings", embeddings, _min_rows(self.gather))
            labels = _labels("labels", labels, z.shape[0])
            if ref_labels is not None:
                raise ValueError("ref_labels was given without ref_emb: pass both, or neither")
            return SeparableScores(
                z, z, "cosine", self.temperature, gather=self.gather, labels=labels, exclude="self"
            )
        z, labels, r, ref_labels = _pml_reference(embeddings, labels, ref_emb, ref_labels)
        if r.shape[0] < z.shape[0]:
            raise ValueError(
                f"ref_emb must have at least as many rows as embeddings, got {r.shape[0]} and "
                f"{z.shape[0]}: with fewer references, pass them as embeddings and the batch as "
                "ref_emb"
            )
        if self.gather:
            raise ValueError("SupConLoss: ref_emb with gather is not supported")
        return SeparableScores(z, r, "cosine", self.temperature, labels=labels, y_labels=ref_labels)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """The loss (to minimise), in the embeddings' dtype; 0 (with a zero gradient) if no
        anchor has a positive.

        Args:
            embeddings: ``(N, d)`` embeddings (the anchors).
            labels: ``(N,)`` integer labels (optional with ``indices_tuple``).
            indices_tuple: a miner's ``(a, p, n)`` or ``(a1, p, a2, n)`` index tensors.
            ref_emb: ``(M, d)`` reference embeddings (the candidates), ``M >= N``.
            ref_labels: ``(M,)`` labels of ``ref_emb``.
        """
        if indices_tuple is not None:
            losses = _listed_supcon(self.temperature, embeddings, labels, indices_tuple, ref_emb)
            if self.reduction == "mean":
                loss = losses.sum() / (losses != 0).sum().clamp_min(1)
            else:
                loss = _reduce(losses, self.reduction)
            return loss.to(embeddings.dtype)
        s = self._scores(embeddings, labels, ref_emb, ref_labels)
        if self.reduction != "mean":
            return _reduce(_anchor_losses(s), self.reduction).to(embeddings.dtype)
        value = infonce(s)
        # the mean over the anchors with a positive of log|C_a| - I_a, or 0 if there is none
        st = batch_statistics(s, s.gather)
        assert st is not None
        counted = (st.n_terms() > 0) if isinstance(st.n_terms(), Tensor) else True
        if isinstance(st, SeparableBatch):  # candidates per anchor: N - 1, or M references
            log_c = (st.w_joint * torch.log(st.ncand)).sum(-1)
        else:
            log_c = torch.log(_global_rows(s) - 1)
        loss = torch.where(torch.as_tensor(counted), log_c, 0.0) - value
        return loss.to(embeddings.dtype)

    def mi(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        r"""The InfoNCE estimate :math:`\log(N-1) - \mathcal{L}` in nats.

        A lower bound on the MI between the two views' representations, for monitoring:
        it is negative early in training (before the critic beats chance) and capped by the
        log of the number of candidates; it carries a gradient, so ``.detach()`` (or
        ``.item()``) it for logging.
        """
        return infonce(self._scores(embeddings, labels, ref_emb, ref_labels))


def _labels(name: str, labels: Any, n: int) -> Tensor:
    """``(n,)`` integer labels, named as the caller passed them."""
    if labels is None:
        raise ValueError(f"{name} is required: pass ({n},) integer labels")
    out = _check_labels(name, labels)
    assert out is not None
    if out.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    return out


def _pml_reference(
    embeddings: Any, labels: Any, ref_emb: Any, ref_labels: Any, need_labels: bool = True
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """pytorch-metric-learning's anchors and references: ``(z, labels, ref, ref_labels)``,
    ``ref`` the embeddings themselves when ``ref_emb`` is None (``ref_labels`` are then the
    labels)."""
    z = _features("embeddings", embeddings, 1)
    lab = _labels("labels", labels, z.shape[0]) if need_labels or labels is not None else None
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb: pass both, or neither")
        return z, lab, z, lab
    r = _features("ref_emb", ref_emb, 1)
    _checks.check_same_last_dim("embeddings", z, "ref_emb", r)
    rl = None
    if need_labels or ref_labels is not None:
        rl = _labels("ref_labels", ref_labels, r.shape[0])
    return z, lab, r, rl


def _listed_pairs(indices_tuple: Any, n: int, m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A miner's ``(a, p, n)`` triplets or ``(a1, p, a2, n)`` pairs as ``(a1, p, a2, n)``
    (a triplet lists the pair ``(a, p)`` and the pair ``(a, n)``), checked against ``n``
    anchors and ``m`` references."""
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        got = type(indices_tuple).__name__
        if isinstance(indices_tuple, (tuple, list)):
            got += f" of length {len(indices_tuple)}"
        raise ValueError(
            "indices_tuple must be a miner's (anchors, positives, negatives) triplets or "
            f"(anchors1, positives, anchors2, negatives) pairs, got {got}"
        )
    names = ("a", "p", "n") if len(indices_tuple) == 3 else ("a1", "p", "a2", "n")
    out = []
    for k, (name, t) in enumerate(zip(names, indices_tuple, strict=True)):
        label = f"indices_tuple[{k}] ({name})"
        if not isinstance(t, Tensor) or t.dim() != 1 or t.is_floating_point():
            got = type(t).__name__
            if isinstance(t, Tensor):
                got = f"shape {tuple(t.shape)}, {t.dtype}"
            raise TypeError(f"{label} must be a 1-D integer tensor of indices, got {got}")
        size = n if name.startswith("a") else m
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
            raise ValueError(
                f"{label} must hold indices in [0, {size}), got values in "
                f"[{int(t.min())}, {int(t.max())}]"
            )
        out.append(t.long())
    if len(out) == 3:
        out = [out[0], out[1], out[0], out[2]]
    for (x, y), what in (((0, 1), "positive"), ((2, 3), "negative")):
        if out[x].shape != out[y].shape:
            raise ValueError(
                f"indices_tuple: the {what} pairs' anchor and partner index tensors must have "
                f"the same length, got {out[x].shape[0]} and {out[y].shape[0]}"
            )
    a1, p, a2, neg = out
    return a1, p, a2, neg


def _pair_scores(z: Tensor, r: Tensor, rows: Tensor, cols: Tensor, tau: Any) -> Tensor:
    """Cosine similarity over ``tau`` of the listed pairs ``(rows[k], cols[k])``, in the
    accumulation dtype (``z``, ``r`` normalised)."""
    return (upcast(z)[rows] * upcast(r)[cols]).sum(-1) / tau


def _scatter_logsumexp(values: Tensor, index: Tensor, size: int) -> Tensor:
    r"""Per index ``0..size-1``, the log-sum-exp of the ``values`` listed under it
    (:math:`-\infty` with a zero gradient where none is)."""
    top = values.new_full((size,), -math.inf).scatter_reduce(
        0, index, values.detach(), "amax", include_self=True
    )
    shift = torch.where(torch.isfinite(top), top, 0.0)
    total = values.new_zeros(size).index_add(0, index, torch.exp(values - shift[index]))
    some = total > 0
    return torch.where(some, torch.log(torch.where(some, total, 1.0)) + shift, -math.inf)


def _listed_supcon(
    tau: Any, embeddings: Any, labels: Any, indices_tuple: Any, ref_emb: Any
) -> Tensor:
    """SupCon's per-anchor losses on a miner's pairs, ``(N,)`` (0 without a positive)."""
    z, _, r, _ = _pml_reference(embeddings, labels, ref_emb, None, need_labels=False)
    a1, p, a2, neg = _listed_pairs(indices_tuple, z.shape[0], r.shape[0])
    n, m = z.shape[0], r.shape[0]
    zn, rn = F.normalize(z, dim=-1), F.normalize(r, dim=-1)
    pos_key = torch.unique(a1 * m + p)  # each listed pair once (the masks of the dense loss)
    cand_key = torch.unique(torch.cat([pos_key, a2 * m + neg]))
    ca, cc = cand_key // m, cand_key % m
    log_den = _scatter_logsumexp(_pair_scores(zn, rn, ca, cc, tau), ca, n)
    pa, pp = pos_key // m, pos_key % m
    log_prob = _pair_scores(zn, rn, pa, pp, tau) - log_den[pa]
    count = torch.zeros(n, dtype=log_prob.dtype, device=z.device).index_add(
        0, pa, torch.ones_like(log_prob)
    )
    total = torch.zeros_like(count).index_add(0, pa, log_prob)
    return -total / count.clamp_min(1)


class PMLNTXentLoss(nn.Module):
    r"""pytorch-metric-learning's ``NTXentLoss``: NT-Xent over labelled embeddings, one loss
    per positive pair, the negatives streamed.

    Called as pytorch-metric-learning's losses are,
    ``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``. On cosine
    similarities over a temperature, :math:`s_{ak} = \cos(z_a, r_k)/\tau` with
    :math:`r = z` unless ``ref_emb`` is given, every positive pair :math:`(a, p)` (equal
    labels, :math:`p \ne a` when the references are the embeddings) has the loss

    .. math::

        \ell_{ap} = -\log\frac{e^{s_{ap}}}{e^{s_{ap}} + \sum_{k \in N(a)} e^{s_{ak}}},

    over the negatives :math:`N(a)` of the anchor (different labels): the other positives of
    :math:`a` are not in the denominator, unlike :class:`NTXentLoss` (lightly's, two views,
    where each anchor has one positive and the two agree). The loss is the mean over the
    positive pairs, as the library's default ``MeanReducer`` returns it; 0 when there is no
    positive pair or no negative pair at all. The per-anchor log-sum-exp over the negatives is
    streamed (never ``N x M`` scores); the positive pairs are listed, so memory grows with
    their number (``N`` for two views per label).

    With ``indices_tuple`` (a miner's ``(a, p, n)`` or ``(a1, p, a2, n)``), the positive pairs
    are the listed ones and the negatives of :math:`a` the listed pairs ``(a, n)``.

    Args:
        temperature: :math:`\tau > 0` (default 0.07, as pytorch-metric-learning's).
        reduction: ``"mean"`` (the loss), ``"sum"``, or ``"none"``: the losses of the positive
            pairs, in the order of ``torch.nonzero`` over (anchor, reference) (the listed
            order with ``indices_tuple``), as pytorch-metric-learning's ``DoNothingReducer``
            returns them.

    Example:
        >>> z = torch.randn(8, 4)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> PMLNTXentLoss(0.07)(z, labels).shape
        torch.Size([])

    References:
        Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of Visual
        Representations." ICML 2020. Sohn. "Improved Deep Metric Learning with Multi-class
        N-pair Loss Objective." NeurIPS 2016.
    """

    def __init__(self, temperature: float | Tensor = 0.07, *, reduction: str = "mean") -> None:
        super().__init__()
        _checks.check_temperature("temperature", temperature)
        self.temperature = temperature
        self.reduction = _reduction("PMLNTXentLoss", reduction)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """The loss (to minimise), in the embeddings' dtype.

        Args:
            embeddings: ``(N, d)`` embeddings (the anchors).
            labels: ``(N,)`` integer labels (optional with ``indices_tuple``).
            indices_tuple: a miner's ``(a, p, n)`` or ``(a1, p, a2, n)`` index tensors.
            ref_emb: ``(M, d)`` reference embeddings (a cross-batch memory).
            ref_labels: ``(M,)`` labels of ``ref_emb``.
        """
        listed = indices_tuple is not None
        z, lab, r, rl = _pml_reference(embeddings, labels, ref_emb, ref_labels, not listed)
        zn = F.normalize(z, dim=-1)
        rn = zn if ref_emb is None else F.normalize(r, dim=-1)
        n, m, tau = z.shape[0], r.shape[0], self.temperature
        if listed:
            a, p, a2, neg = _listed_pairs(indices_tuple, n, m)
            log_neg = _scatter_logsumexp(_pair_scores(zn, rn, a2, neg, tau), a2, n)
            any_negative = a2.numel() > 0
        else:
            assert lab is not None and rl is not None
            own = ref_emb is None
            layout = PairLayout(lab, rl, 0, 1 if own else 0, n)
            log_neg = row_terms(zn, rn, tau, "dot", layout=layout, keep="neg")
            a, p = _label_pairs(lab, rl, own)
            any_negative = bool(torch.isfinite(log_neg).any())
        if a.numel() == 0 or not any_negative:
            zero = upcast(z).sum() * 0  # no pair to learn from: 0, and a zero gradient
            loss = zero.new_zeros((0,)) if self.reduction == "none" else zero
            return loss.to(z.dtype)
        s_pos = _pair_scores(zn, rn, a, p, tau)
        losses = F.softplus(log_neg[a] - s_pos)  # log(e^s + sum_neg e^t) - s
        loss = losses.mean() if self.reduction == "mean" else _reduce(losses, self.reduction)
        return loss.to(z.dtype)


def _label_pairs(labels: Tensor, ref_labels: Tensor, own: bool) -> tuple[Tensor, Tensor]:
    """The positive pairs ``(a, p)``, equal labels (``p != a`` when ``own``), a panel of
    anchors at a time (no ``N x M`` mask)."""
    n, m = labels.shape[0], ref_labels.shape[0]
    rows = panel_rows(m, get_memory_budget(labels.device), buffers=1)
    anchors, partners = [], []
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        same = labels[r0:r1, None] == ref_labels[None, :]
        if own:
            idx = torch.arange(r0, r1, device=labels.device)
            same[idx - r0, idx] = False
        a, p = same.nonzero(as_tuple=True)
        anchors.append(a + r0)
        partners.append(p)
    return torch.cat(anchors), torch.cat(partners)


class MoCoLoss(nn.Module):
    r"""MoCo's contrastive loss: each query against its own key and a queue of K negatives.

    .. math::

        \mathcal{L} = \frac1N\sum_i -\log\frac{e^{q_i\cdot k_i/\tau}}{e^{q_i\cdot k_i/\tau} +
        \sum_{k=1}^{K} e^{q_i\cdot \kappa_k/\tau}} = \log(K+1) - I_\mathrm{NCE},

    the cross-entropy of MoCo's ``logits = cat([l_pos, l_neg]) / T`` with label 0. The other
    in-batch keys are not negatives (``exclude="batch"``). Features are used as given (MoCo
    normalises them in the encoder); the queue is not differentiated.

    Args:
        temperature: :math:`\tau > 0` (MoCo v2's 0.2; v1's 0.07 is the default here).
        reduction: ``"mean"`` (MoCo's loss), ``"sum"``, or ``"none"``: one loss per query,
            ``(N,)`` (streamed).

    Example:
        >>> q, k = torch.randn(4, 8), torch.randn(4, 8)
        >>> queue = MemoryQueue(16, 8)
        >>> loss = MoCoLoss(0.07)(q, k, queue(k))  # the queue before k is pushed
        >>> loss.shape, len(queue)
        (torch.Size([]), 4)

    References:
        He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation
        Learning." CVPR 2020.
    """

    def __init__(self, temperature: float | Tensor = 0.07, *, reduction: str = "mean") -> None:
        super().__init__()
        _checks.check_temperature("temperature", temperature)
        self.temperature = temperature
        self.reduction = _reduction("MoCoLoss", reduction)

    def _scores(self, query: Any, key: Any, queue: Any) -> SeparableScores:
        q = _features("query", query, min_n=1)
        k = _features("key", key, min_n=1)
        _same_shape("query", q, "key", k)
        _checks.check_tensor("queue", queue, min_dim=2)
        if queue.dim() != 2 or queue.shape[-1] != q.shape[-1]:
            raise ValueError(
                f"queue must be (K, {q.shape[-1]}) to match the features, got {tuple(queue.shape)}"
            )
        if q.shape[0] == 1 and queue.shape[0] == 0:
            raise ValueError(
                "query has one sample and queue is empty: the query has no negative; pass "
                "a batch of at least 2 or a non-empty queue"
            )
        _checks.check_values("queue", queue)
        candidates = torch.cat([k, queue.detach().to(k.dtype)], dim=0)
        return SeparableScores(q, candidates, "dot", self.temperature, exclude="batch")

    def forward(self, query: Tensor, key: Tensor, queue: Tensor) -> Tensor:
        """The loss (to minimise), in the features' dtype.

        Args:
            query: ``(N, d)`` query features.
            key: ``(N, d)`` key features; row ``i`` is query ``i``'s positive.
            queue: ``(K, d)`` negatives (``K`` may be 0 when ``N >= 2``), not differentiated.
        """
        s = self._scores(query, key, queue)
        if self.reduction != "mean":
            return _reduce(_anchor_losses(s), self.reduction).to(query.dtype)
        return (math.log(s.y.shape[-2] - s.x.shape[-2] + 1) - infonce(s)).to(query.dtype)

    def mi(self, query: Tensor, key: Tensor, queue: Tensor) -> Tensor:
        r"""The InfoNCE estimate :math:`\log(K+1) - \mathcal{L}` in nats.

        A lower bound on the MI between the two views' representations, for monitoring:
        it is negative early in training (before the critic beats chance) and capped by the
        log of the number of candidates; it carries a gradient, so ``.detach()`` (or
        ``.item()``) it for logging.
        """
        return infonce(self._scores(query, key, queue))


class MemoryQueue(nn.Module):
    r"""A first-in first-out queue of detached keys (MoCo's queue, a memory bank).

    The entries live in a buffer, so they move with ``.to()`` and are saved in the
    ``state_dict``. Calling the module returns the entries held **before** the call and then
    pushes the new keys (the MoCo order); :meth:`push` and :attr:`entries` do each half.

    Args:
        size: capacity K (the oldest entries are overwritten once full).
        dim: feature size.
        dtype: the dtype of the stored keys.

    Example:
        >>> queue = MemoryQueue(3, 2)
        >>> queue.push(torch.ones(2, 2))
        >>> queue(torch.zeros(2, 2)).shape  # the two ones, then the zeros are pushed
        torch.Size([2, 2])
        >>> len(queue)
        3
    """

    bank: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        _checks.check_positive_int("size", size)
        _checks.check_positive_int("dim", dim)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.register_buffer("bank", torch.zeros(size, dim, dtype=dtype))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    @property
    def entries(self) -> Tensor:
        """The keys held now, oldest first, ``(len, dim)`` (a detached copy)."""
        size, n, p = self.bank.shape[0], int(self.count), int(self.ptr)
        if n < size:
            return self.bank[:n].clone()
        return torch.cat([self.bank[p:], self.bank[:p]]).clone()

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Append ``keys`` ``(B, dim)`` (detached), overwriting the oldest entries."""
        _checks.check_tensor("keys", keys, min_dim=2)
        size, dim = self.bank.shape
        if keys.dim() != 2 or keys.shape[1] != dim:
            raise ValueError(f"keys must be (B, {dim}), got {tuple(keys.shape)}")
        _checks.check_values("keys", keys)
        keys = keys.detach()[-size:].to(self.bank.dtype)
        idx = (int(self.ptr) + torch.arange(keys.shape[0], device=self.bank.device)) % size
        self.bank[idx] = keys
        self.ptr.fill_((int(self.ptr) + keys.shape[0]) % size)
        self.count.fill_(min(size, int(self.count) + keys.shape[0]))

    def forward(self, keys: Tensor) -> Tensor:
        """The entries before this call, ``(len, dim)``; then ``keys`` are pushed."""
        held = self.entries
        self.push(keys)
        return held
