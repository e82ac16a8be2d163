"""Quality of a clustering against reference labels (evaluation only: nothing here trains on them).

- clustering accuracy: the best one-to-one matching of predicted clusters to classes (the Hungarian
  algorithm, ``scipy.optimize.linear_sum_assignment``), then the fraction of points whose matched class is
  their class — the figure the MBN papers report (arXiv 1408.0848, 1503.06452);
- NMI: scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean normalisation, its default);
- agreement: the fraction of points on which two labelings give the same index (a student trained on a
  teacher's cluster indices predicts those indices, so no matching is involved).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _labels(y: Any, name: str) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, but got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, but got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"labels must be two non-empty arrays of one length, but got {t.size} and {p.size}")
    return t, p


def clustering_accuracy(y_true: Any, y_pred: Any) -> float:
    """Accuracy under the best one-to-one map of clusters to classes (Hungarian matching)."""
    from scipy.optimize import linear_sum_assignment

    t, p = _pair(y_true, y_pred)
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    counts = np.zeros((pi.max() + 1, ti.max() + 1), dtype=np.int64)
    np.add.at(counts, (pi, ti), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / t.size)


def nmi(y_true: Any, y_pred: Any) -> float:
    """Normalised mutual information (scikit-learn, arithmetic normalisation)."""
    from sklearn.metrics import normalized_mutual_info_score

    t, p = _pair(y_true, y_pred)
    return float(normalized_mutual_info_score(t, p))


def agreement(a: Any, b: Any) -> float:
    """Fraction of points with the same index in both labelings."""
    x, y = _pair(a, b)
    return float((x == y).mean())
