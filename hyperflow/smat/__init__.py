"""SMAT (Chen et al., sparse interpolated experts) in the target's bias space: the gradient-free
competitor meta-tuned from the same trajectory stores, with the stored bias-tuned endpoints as
its dense teachers."""

from hyperflow.smat.gates import HardConcreteGates
from hyperflow.smat.model import Router, Smat, SmatConfig
from hyperflow.smat.objective import SmatEpisode, SmatLoss, SmatObjective, kd_loss, smat_loss

__all__ = [
    "HardConcreteGates",
    "Router",
    "Smat",
    "SmatConfig",
    "SmatEpisode",
    "SmatLoss",
    "SmatObjective",
    "kd_loss",
    "smat_loss",
]
