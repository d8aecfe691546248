"""Objectives of three papers, built from the bounds: FactorCL, LBE/RC and f-MICL.

* :mod:`mibounds.methods.factorcl`: FactorCL-SUP and FactorCL-SSL (Liang et al., NeurIPS 2023).
* :mod:`mibounds.methods.infocl`: the LBE and RC regularisers (Wang et al., CVPR 2022).
* :mod:`mibounds.methods.f_micl`: f-MICL (Lu et al., TMLR 2023).
* :mod:`mibounds.methods.augment` and :mod:`mibounds.methods.evaluation`: augmentations and
  linear-probe / collapse diagnostics used by the examples.
"""

from mibounds.methods.augment import image_augment, mixup, sequence_augment, vector_augment
from mibounds.methods.evaluation import effective_rank, linear_probe, mean_pairwise_sq_distance
from mibounds.methods.f_micl import FMICL, fmicl, fmicl_terms, log_kernel_scores
from mibounds.methods.factorcl import FactorCL, FactorCLSSL, FactorCLSUP
from mibounds.methods.infocl import LBE, lbe_bound, reconstruction_loss
from mibounds.methods.networks import ConvDecoder, SmallConvEncoder

__all__ = [
    "ConvDecoder",
    "FMICL",
    "FactorCL",
    "FactorCLSSL",
    "FactorCLSUP",
    "LBE",
    "SmallConvEncoder",
    "effective_rank",
    "fmicl",
    "fmicl_terms",
    "image_augment",
    "lbe_bound",
    "linear_probe",
    "log_kernel_scores",
    "mean_pairwise_sq_distance",
    "mixup",
    "reconstruction_loss",
    "sequence_augment",
    "vector_augment",
]
