r"""Streaming reductions of separable scores: O(N) memory, gradient computed in the forward sweep.

The score matrix ``S = sim(x, y) / tau + bias`` of a separable critic is never materialised.
This module is the one place the rest of the library calls; behind it:

* :mod:`mibounds.kernels.entry`: the entry points below (leading dimensions, temperature,
  pairing and CUDA autocast turned into one op call);
* :mod:`mibounds.kernels.ops`: the ``mibounds::`` custom ops (fake and autograd
  registrations, so an outer ``torch.compile`` treats each as one node) and the decision where
  a call runs;
* :mod:`mibounds.kernels.cost`: the cost model that picks each call's path (fused kernels,
  tensor-core panels or the sweep);
* :mod:`mibounds.kernels.triton_kernels`: the fused GPU kernels (tiles of ``S`` in registers,
  online log-sum-exp, tensor-core products of half-precision features);
* :mod:`mibounds.kernels.gemm_panels`: the tensor-core panels for large feature sizes (cuBLAS
  products with float32 results, one fused elementwise kernel per panel pass);
* :mod:`mibounds.kernels.selfcheck`: the one-time check of each fused kernel against the sweep;
* :mod:`mibounds.kernels.panels` and :mod:`mibounds.kernels.sweep`: the PyTorch panel sweep,
  the reference and the path of float64, Gaussian-kernel scores and the CPU;
* :mod:`mibounds.kernels.elementwise`: the elementwise functions of the streamed sums.

Similarities handled here are ``"dot"`` and ``"gaussian"`` (:math:`-\|x - y\|^2`); cosine
scores are dot scores of normalised features, normalised by the caller with ordinary
(differentiable) torch ops.
"""

from __future__ import annotations

from mibounds.kernels import elementwise as _elementwise
from mibounds.kernels import panels as _panels
from mibounds.kernels.elementwise import (
    elementwise,
    elementwise_function,
    forward_derivative,
    mark_triton,
)
from mibounds.kernels.entry import (
    interpolated_terms,
    offdiag_logmeanexp,
    offdiag_means,
    row_logsumexp_mean,
    symmetric_logsumexp_mean,
)
from mibounds.kernels.ops import path_usage
from mibounds.kernels.panels import (
    get_backend,
    get_memory_budget,
    panel_rows,
    set_backend,
    set_memory_budget,
)
from mibounds.kernels.selfcheck import (
    set_triton,
    triton_enabled,
    triton_on,
    triton_status,
    triton_usage,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "ELEMENTWISE",
    "elementwise",
    "elementwise_function",
    "forward_derivative",
    "get_backend",
    "get_memory_budget",
    "interpolated_terms",
    "mark_triton",
    "offdiag_logmeanexp",
    "offdiag_means",
    "panel_rows",
    "path_usage",
    "row_logsumexp_mean",
    "set_backend",
    "set_memory_budget",
    "set_triton",
    "symmetric_logsumexp_mean",
    "triton_enabled",
    "triton_on",
    "triton_status",
    "triton_usage",
]

#: Bytes of panel workspace per sweep on the CPU (about four ``P x N`` float32 buffers live at
#: once); on a GPU the default is sized from the free memory (see :func:`get_memory_budget`).
DEFAULT_MEMORY_BUDGET = _panels.DEFAULT_MEMORY_BUDGET
#: Elementwise functions the streamed sums know: name -> id. Each has a value function and an
#: explicit derivative (autograd is not available inside a custom op); see :func:`elementwise`.
ELEMENTWISE = _elementwise.ELEMENTWISE
