"""Multilayer bootstrap networks (MBN): an unsupervised, non-neural teacher for label-free compression.

``MBN(MBNConfig(...)).fit(x)`` fits on unlabeled inputs; ``predict`` gives k-means cluster indices of the
MBN output; ``save`` / ``MBN.load`` use plain tensors only. See :mod:`sweep.mbn.model` for what is known
from the papers and what is reconstructed, :mod:`sweep.mbn.config` for the defaults, and
:mod:`sweep.mbn.metrics` for clustering accuracy, NMI and agreement.
"""

from .config import MBNConfig, k_schedule
from .metrics import agreement, clustering_accuracy, nmi

__all__ = ["MBN", "MBNConfig", "agreement", "clustering_accuracy", "k_schedule", "nmi"]


def __getattr__(name):
    # torch is imported only when the model is used, so that reading a search space stays light
    if name == "MBN":
        from .model import MBN

        return MBN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
