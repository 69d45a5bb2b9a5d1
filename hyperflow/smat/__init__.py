"""SMAT (Chen et al., sparse interpolated experts) in the target's bias space: the gradient-free
competitor meta-tuned from the same trajectory stores, with the stored bias-tuned endpoints as
its dense teachers."""

from hyperflow.smat.adapt import SMAT_METHODS, adapt_smat, adapt_smat_finetune
from hyperflow.smat.gates import HardConcreteGates
from hyperflow.smat.io import load_smat, read_smat_meta, save_smat
from hyperflow.smat.model import Router, Smat, SmatConfig
from hyperflow.smat.objective import SmatEpisode, SmatLoss, SmatObjective, kd_loss, smat_loss

__all__ = [
    "SMAT_METHODS",
    "HardConcreteGates",
    "Router",
    "Smat",
    "SmatConfig",
    "SmatEpisode",
    "SmatLoss",
    "SmatObjective",
    "adapt_smat",
    "adapt_smat_finetune",
    "kd_loss",
    "load_smat",
    "read_smat_meta",
    "save_smat",
    "smat_loss",
]
