r"""Drop-in contrastive losses: the exact values of the losses people train with, streamed.

Each module returns the **value of the loss it replaces** (the number the original library
prints, to float rounding), computed on :class:`~mibounds.scores.SeparableScores` by the
streaming kernels, so the ``N x M`` score matrix is never built (except by CLIP's and SigLIP's
losses of a batch of at most 768 or 1448 pairs, which hold it, where that is faster:
:mod:`mibounds.kernels.small`). Each is an MI bound in disguise; :meth:`mi` returns the
estimate it implies.

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

from mibounds.contrastive.lightly import NTXentLoss
from mibounds.contrastive.moco import MemoryQueue, MoCoLoss
from mibounds.contrastive.open_clip import CLIPLoss, SigLIPLoss
from mibounds.contrastive.pml import PMLNTXentLoss, SupConLoss

__all__ = [
    "CLIPLoss",
    "MemoryQueue",
    "MoCoLoss",
    "NTXentLoss",
    "PMLNTXentLoss",
    "SigLIPLoss",
    "SupConLoss",
]
