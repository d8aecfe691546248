"""OpenCLIP's losses, streamed: :class:`CLIPLoss` (``ClipLoss``) and :class:`SigLIPLoss`
(``SigLipLoss``). Importable under OpenCLIP's own names too: ``from
mibounds.contrastive.open_clip import ClipLoss, SigLipLoss``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mibounds import reductions
from mibounds.bounds.lower import infonce, nwj
from mibounds.contrastive._common import (
    _anchor_losses,
    _global_rows,
    _local_scores,
    _min_rows,
    _reduce,
    _reduction,
)
from mibounds.distributed import GroupArg
from mibounds.scores import SeparableScores

__all__ = ["CLIPLoss", "ClipLoss", "SigLIPLoss", "SigLipLoss"]


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


def _output(loss: Tensor, dtype: torch.dtype, output_dict: bool) -> Tensor | dict[str, Tensor]:
    """The loss in ``dtype`` (the features'), in OpenCLIP's return convention:
    ``{"contrastive_loss": loss}`` with ``output_dict``."""
    if not isinstance(output_dict, bool):
        raise TypeError(f"output_dict must be a bool, got {type(output_dict).__name__}")
    if loss.dtype != dtype:
        loss = loss.to(dtype)
    return {"contrastive_loss": loss} if output_dict else loss


def _image_text(
    image_features: Any,
    text_features: Any,
    logit_scale: Any,
    logit_bias: Any,
    gather: GroupArg,
    shift: float = 0.0,
    small: str | None = None,
) -> SeparableScores:
    """OpenCLIP's operands, checked once and named as its losses take them, as the scores
    ``t u.v + b`` (plus ``shift``, added to every logit); ``small``: the loss the caller
    reduces them with on the small-batch path, where it covers them (see
    :meth:`SeparableScores._of_loss`)."""
    return SeparableScores._of_loss(
        _min_rows(gather), {"image_features": image_features, "text_features": text_features},
        "dot", logit_scale=("logit_scale", logit_scale), logit_bias=("logit_bias", logit_bias),
        shift=shift, gather=gather, small=small,
    )  # fmt: skip


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
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Any,
        logit_bias: Any,
        small: str | None = None,
    ) -> SeparableScores:
        return _image_text(
            image_features, text_features, logit_scale, logit_bias, self.gather, small=small
        )

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
        small = "cross_entropy" if self.reduction == "mean" and not self.local else None
        s = self._scores(image_features, text_features, logit_scale, logit_bias, small)
        if self.local:
            loss = self._local_loss(s)
        elif self.reduction == "mean":
            nce = reductions.nce_loss(s, symmetric=True)  # one process: formed row by row
            loss = torch.log(_global_rows(s)) - infonce(s, symmetric=True) if nce is None else nce
        else:
            loss = _reduce(_anchor_losses(s, symmetric=True), self.reduction)
        return _output(loss, image_features.dtype, output_dict)

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

    def _scores(
        self,
        u: Any,
        v: Any,
        logit_scale: Any,
        logit_bias: Any,
        shift: float = 0.0,
        small: str | None = None,
    ) -> SeparableScores:
        return _image_text(u, v, logit_scale, logit_bias, self.gather, shift, small)

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
        small = "sigmoid" if self.reduction == "mean" and not self.local else None
        s = self._scores(image_features, text_features, logit_scale, logit_bias, small=small)
        n_columns = None
        if self.local:  # this rank's images against every rank's texts
            s, n_columns = _local_scores(s.x, s.y, s.temperature, s.bias, self.gather)
        if self.reduction != "mean":
            rows = reductions.separable_rows(s)
            assert rows is not None
            losses = rows.row_terms("pos", "softplus-neg") + rows.row_terms("neg", "softplus")
            loss = _reduce(losses, self.reduction)
            return _output(loss, image_features.dtype, output_dict)
        loss = reductions.sigmoid_loss(s, n_columns)
        return _output(loss, image_features.dtype, output_dict)

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


#: OpenCLIP's name of :class:`CLIPLoss` (``from mibounds.contrastive.open_clip import ClipLoss``).
ClipLoss = CLIPLoss
#: OpenCLIP's name of :class:`SigLIPLoss`.
SigLipLoss = SigLIPLoss
