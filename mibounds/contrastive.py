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
     - lightly ``NTXentLoss`` (no memory bank)
     - :math:`\log(2N-1) - \mathcal{L}`
   * - :class:`SupConLoss`
     - supervised contrastive ``L_out``
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
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mibounds import _checks
from mibounds._dtypes import upcast
from mibounds.bounds.lower import infonce, nwj
from mibounds.distributed import GroupArg, batch_layout
from mibounds.reductions import batch_statistics
from mibounds.scores import SeparableScores

__all__ = ["CLIPLoss", "MemoryQueue", "MoCoLoss", "NTXentLoss", "SigLIPLoss", "SupConLoss"]


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
    if local_loss:
        raise ValueError(
            f"{owner}: local_loss=True (each rank's own rows against every rank's columns) is "
            "not supported; world_size > 1 (or gather=True) gives the loss of the global batch, "
            "whose gradients after DDP's averaging are those of OpenCLIP's local loss"
        )
    if world_size > 1 and not gather:
        return True
    return gather


def _output(loss: Tensor, output_dict: bool) -> Tensor | dict[str, Tensor]:
    """OpenCLIP's return convention: ``{"contrastive_loss": loss}`` with ``output_dict``."""
    if not isinstance(output_dict, bool):
        raise TypeError(f"output_dict must be a bool, got {type(output_dict).__name__}")
    return {"contrastive_loss": loss} if output_dict else loss


def _min_rows(gather: Any) -> int:
    """Rows a rank needs: one with negatives from other ranks, else two."""
    return 1 if gather else 2


def _same_shape(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape (N, d), got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


class CLIPLoss(nn.Module):
    r"""OpenCLIP's ``ClipLoss``: symmetric cross-entropy of image-text logits, streamed.

    .. math::

        \mathcal{L} = \frac{1}{2N}\sum_i \Big[-\log\frac{e^{t\,u_i\cdot v_i}}{\sum_j e^{t\,u_i
        \cdot v_j}} - \log\frac{e^{t\,u_i\cdot v_i}}{\sum_j e^{t\,u_j\cdot v_i}}\Big]
        = \log N - I_\mathrm{NCE}^\mathrm{sym},

    with :math:`t` the logit scale (features are used as given: OpenCLIP normalises them in the
    model). Equal to ``open_clip.ClipLoss()(image_features, text_features, logit_scale)``.

    Args:
        local_loss: OpenCLIP's rank-local loss; ``True`` is refused with a ``ValueError`` (use
            the global loss below: its gradients after DDP's averaging are the same).
        gather_with_grad: accepted for OpenCLIP's signature; the gathered negatives always
            carry their gradient here.
        cache_labels: accepted for OpenCLIP's signature (no label tensor is built).
        rank: this process's rank, as OpenCLIP takes it (``torch.distributed`` supplies it).
        world_size: ``> 1`` gathers the negatives of every rank (as ``gather=True``).
        use_horovod: ``True`` is refused with a ``ValueError`` (torch.distributed only).
        gather: ``True`` or a process group: negatives from every rank, like OpenCLIP's
            ``gather_with_grad=True, local_loss=False``; every rank returns the loss of the
            global batch (see :mod:`mibounds.distributed`).

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
    ) -> None:
        super().__init__()
        self.gather = _openclip_group("CLIPLoss", gather, world_size, rank, local_loss, use_horovod)

    def _scores(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Any, logit_bias: Any
    ) -> SeparableScores:
        u = _features("image_features", image_features, _min_rows(self.gather))
        v = _features("text_features", text_features, _min_rows(self.gather))
        _same_shape("image_features", u, "text_features", v)
        t = _scale("logit_scale", logit_scale)
        b = None if logit_bias is None else _bias("logit_bias", logit_bias)
        return SeparableScores(u, v, "dot", 1 / t, gather=self.gather, bias=b)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Any,
        logit_bias: Any = None,
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
        loss = self._log_count(s) - infonce(s, symmetric=True)
        return _output(loss.to(image_features.dtype), output_dict)

    def _log_count(self, s: SeparableScores) -> Tensor:
        return torch.log(_global_rows(s))

    def mi(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Any,
        logit_bias: Any = None,
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
        world_size: ``> 1`` gathers the texts of every rank (as ``gather=True``). OpenCLIP
            then returns each rank's own share of the loss; this returns the loss of the
            global batch (the gradients after DDP's averaging agree).
        dist_impl: OpenCLIP's exchange scheme (``"bidir"``, ``"shift"``, ``"reduce"``,
            ``"gather"`` or ``None``); accepted, the exchange is always a gather here.
        gather: ``True`` or a process group: every rank's texts are negatives of every image;
            each rank returns the loss of the global batch, divided by the global N.

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
    ) -> None:
        super().__init__()
        impls = (None, "bidir", "shift", "reduce", "gather")
        if dist_impl not in impls:
            raise ValueError(f"SigLIPLoss: dist_impl must be one of {impls}, got {dist_impl!r}")
        self.gather = _openclip_group("SigLIPLoss", gather, world_size, rank)

    def _scores(self, u: Any, v: Any, logit_scale: Any, logit_bias: Any, shift: float = 0.0):
        u = _features("image_features", u, _min_rows(self.gather))
        v = _features("text_features", v, _min_rows(self.gather))
        _same_shape("image_features", u, "text_features", v)
        t = _scale("logit_scale", logit_scale)
        b = None if logit_bias is None else _bias("logit_bias", logit_bias)
        bias = (None if shift == 0.0 else shift) if b is None else b + shift
        return SeparableScores(u, v, "dot", 1 / t, bias=bias, gather=self.gather)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Any,
        logit_bias: Any = None,
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
        st = batch_statistics(s, s.gather)
        assert st is not None
        _, negatives = st.offdiag_means("softplus")
        loss = st.joint("softplus-neg") + (st.n - 1) * negatives
        return _output(loss.to(image_features.dtype), output_dict)

    def mi(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Any,
        logit_bias: Any = None,
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
        gather_distributed: lightly's name for ``gather=True``. lightly then returns each
            rank's own share of the loss; this returns the loss of the global batch (the
            gradients after DDP's averaging agree). Not with a memory bank.
        gather: ``True`` or a process group: negatives from every rank.

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
    ) -> None:
        super().__init__()
        _checks.check_temperature("temperature", temperature)
        self.temperature = temperature
        if not isinstance(gather_distributed, bool):
            raise TypeError(
                f"gather_distributed must be a bool, got {type(gather_distributed).__name__}"
            )
        self.gather = gather or gather_distributed
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
        """The loss (to minimise), in the features' dtype."""
        if self.bank_size:
            return self._bank_loss(out0, out1)
        s = self._scores(out0, out1)
        return (torch.log(_global_rows(s) - 1) - infonce(s)).to(out0.dtype)

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
    pytorch-metric-learning's ``SupConLoss(temperature)`` computes.

    Args:
        temperature: :math:`\tau > 0` (default 0.1).
        gather: ``True`` or a process group: negatives from every rank.

    Example:
        >>> z = torch.randn(8, 4)
        >>> SupConLoss(0.1)(z, torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])).shape
        torch.Size([])

    References:
        Khosla et al. "Supervised Contrastive Learning." NeurIPS 2020.
    """

    def __init__(self, temperature: float | Tensor = 0.1, *, gather: GroupArg = False) -> None:
        super().__init__()
        _checks.check_temperature("temperature", temperature)
        self.temperature = temperature
        self.gather = gather

    def _scores(self, embeddings: Any, labels: Any) -> SeparableScores:
        if isinstance(embeddings, Tensor) and embeddings.dim() == 3:
            b, v, d = embeddings.shape
            raise ValueError(
                f"embeddings must be (N, d) features, got shape {(b, v, d)}: for the SupCon "
                f"paper's [batch, n_views, dim] features, pass torch.cat(embeddings.unbind(1)) "
                f"(shape ({b * v}, {d})) and labels.repeat({v}) (shape ({b * v},))"
            )
        z = _features("embeddings", embeddings, _min_rows(self.gather))
        if not isinstance(labels, Tensor) or labels.shape != z.shape[:1]:
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a tensor of shape ({z.shape[0]},), got {got}")
        return SeparableScores(
            z, z, "cosine", self.temperature, gather=self.gather, labels=labels, exclude="self"
        )

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The loss (to minimise); 0 (with a zero gradient) if no anchor has a positive."""
        s = self._scores(embeddings, labels)
        value = infonce(s)
        # log(N - 1) - I, or 0 if no anchor has a positive (then I is 0 too)
        st = batch_statistics(s, s.gather)
        assert st is not None
        counted = (st.n_terms() > 0) if isinstance(st.n_terms(), Tensor) else True
        loss = torch.where(torch.as_tensor(counted), torch.log(_global_rows(s) - 1), 0.0) - value
        return loss.to(embeddings.dtype)

    def mi(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        r"""The InfoNCE estimate :math:`\log(N-1) - \mathcal{L}` in nats.

        A lower bound on the MI between the two views' representations, for monitoring:
        it is negative early in training (before the critic beats chance) and capped by the
        log of the number of candidates; it carries a gradient, so ``.detach()`` (or
        ``.item()``) it for logging.
        """
        return infonce(self._scores(embeddings, labels))


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

    def __init__(self, temperature: float | Tensor = 0.07) -> None:
        super().__init__()
        _checks.check_temperature("temperature", temperature)
        self.temperature = temperature

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
        """The loss (to minimise)."""
        s = self._scores(query, key, queue)
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
