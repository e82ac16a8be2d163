"""MBN settings: one frozen, self-validating config, and the k schedule it implies.

Defaults and where they come from (Zhang, "Multilayer bootstrap networks", arXiv 1408.0848; Zhang,
"Unsupervised model compression for multilayer bootstrap networks", arXiv 1503.06452):

- ``V`` (clusterings per layer) = 100. The MBN papers' usual V is 400 (METHODS.md §5, recalled from the
  MBN paper, not verified). Fitting and predicting cost grows linearly in V, and the 2-core machines this
  project targets measured digits at V = 100 already at clustering accuracy 0.936 (METHODS.md §5);
  the estimation variance that V averages out falls like 1/V, so 100 is where the default stops paying
  for itself on such machines. *Reconstruction* (our choice).
- ``k1`` = half the training set (arXiv 1408.0848, as recalled in METHODS.md §5: "k halves per layer from
  about half the data size"). With k1 = N/2 the bottom layer costs about V · (N/2) · a·D multiply-adds per
  point, N times over when fitting: on 2 cores, fit on at most a few thousand points of 784 features (the
  benchmark fits 3,000 Fashion-MNIST images at V = 100 in about 15-20 s and predicts the rest) — a training
  subset is the caller's choice, MBN fits what it is given.
- ``delta`` = 0.5: k halves per layer (same source).
- ``feature_ratio`` = 0.5: the random feature subset of each clustering (same source; the random
  feature selection itself is in the abstract of arXiv 1408.0848).
- ``k_floor`` = 1.5: layers are added while k >= ceil(1.5 × clusters) (METHODS.md §5: "down to about
  1.5 × the number of classes"); the exact stopping rule is a *reconstruction*: k_l = floor(k1 · δ^(l-1))
  computed step by step (k_{l+1} = floor(δ · k_l)), and the first k below the floor is not built. The
  bottom layer is always built, even when k1 is already under the floor.
- ``out_dim`` = ``clusters``: the top PCA outputs as many dimensions as there are clusters (arXiv
  1408.0848's MNIST setting: a 10-dimensional output for 10 classes, METHODS.md §5).
- ``fit_points`` (a sweep's teacher only; our design): MBN is fitted on a seeded subset of that many training
  inputs (drawn without reading a label) and then labels *every* training input for the student. Fitting
  costs about N · V · k1 with k1 = N/2, so on 2 cores MBN is fitted on a few thousand points, while the
  student's agreement keeps growing with the number of inputs MBN labels for it (``bench/mbn.py``: 0.932
  with 15,000, 0.949 with 57,000). ``None``: fitted on every training input.
- The application is k-means into ``clusters`` clusters (arXiv 1503.06452's example application);
  ``kmeans_init`` = 10 restarts is scikit-learn's classic default, our choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from ..errors import ConfigError

# keys a user may set (the YAML teacher block and MBNConfig's arguments are the same names)
KEYS = ("V", "k1", "delta", "feature_ratio", "clusters", "out_dim", "k_floor", "kmeans_init", "seed", "fit_points")


@dataclass(frozen=True)
class MBNConfig:
    """MBN's settings. ``where`` (not a setting) names where they came from, for error messages."""

    V: int = 100
    k1: int | None = None  # None: half the training set (checked against it at fit time)
    delta: float = 0.5
    feature_ratio: float = 0.5
    clusters: int = 10
    out_dim: int | None = None  # None: clusters
    k_floor: float = 1.5
    kmeans_init: int = 10
    seed: int = 0
    fit_points: int | None = None  # as a sweep's teacher: None fits on every training input (see module doc)
    where: str = field(default="mbn", compare=False, repr=False)

    def __post_init__(self):
        _int(self, "V", lo=1)
        if self.k1 is not None:
            _int(self, "k1", lo=2)
        _float(self, "delta", 0.0, 1.0, lo_open=True, hi_open=True)
        _float(self, "feature_ratio", 0.0, 1.0, lo_open=True, hi_open=False)
        _int(self, "clusters", lo=2)
        if self.out_dim is not None:
            _int(self, "out_dim", lo=1)
        _float(self, "k_floor", 0.0, None, lo_open=True, hi_open=False)
        _int(self, "kmeans_init", lo=1)
        _int(self, "seed", lo=0)
        if self.fit_points is not None:
            _int(self, "fit_points", lo=4)

    @classmethod
    def from_mapping(cls, data: Any, where: str = "mbn") -> "MBNConfig":
        """Settings from a mapping (e.g. a YAML block); unknown keys are errors naming the allowed ones."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"MBN settings must be a mapping, but got {type(data).__name__} {data!r} ({where})")
        unknown = [k for k in data if k not in KEYS]
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in {where}; allowed keys: {', '.join(KEYS)}")
        values = dict(data)
        for key in ("delta", "feature_ratio", "k_floor"):
            if isinstance(values.get(key), str):  # YAML reads "5e-1" as a string
                try:
                    values[key] = float(values[key])
                except ValueError:
                    pass
        return cls(**values, where=where)

    def settings(self) -> dict:
        """The settings as plain values (what a saved MBN stores; ``where`` is not one)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "where"}

    def loc(self, key: str) -> str:
        return f"{self.where}.{key}"

    # ------------------------------------------------------------------ checks that need the data
    def resolve(self, n: int) -> "ResolvedMBN":
        """The concrete schedule for ``n`` training points; errors name the key that does not fit."""
        if self.clusters > n:
            raise ConfigError(f"clusters must be at most the number of training points ({n}), but got "
                              f"clusters={self.clusters} ({self.loc('clusters')})")
        k1 = self.k1 if self.k1 is not None else n // 2
        if self.k1 is None and k1 < 2:
            raise ConfigError(f"MBN needs at least 4 training points for its default k1 (half the training set), "
                              f"but got {n} ({self.loc('k1')})")
        if k1 > n:
            raise ConfigError(f"k1 must be at most the number of training points ({n}), but got k1={k1} "
                              f"({self.loc('k1')})")
        ks = k_schedule(k1, self.delta, self.clusters, self.k_floor)
        out_dim = self.out_dim if self.out_dim is not None else self.clusters
        top = min(n, self.V * ks[-1])
        if out_dim > top:
            raise ConfigError(f"out_dim must be at most min(training points, V × top-layer k) = {top}, but got "
                              f"out_dim={out_dim} ({self.loc('out_dim' if self.out_dim is not None else 'clusters')})")
        return ResolvedMBN(ks=tuple(ks), out_dim=out_dim)


@dataclass(frozen=True)
class ResolvedMBN:
    ks: tuple[int, ...]  # centroids per clustering, bottom layer first
    out_dim: int


def k_floor_value(clusters: int, k_floor: float) -> int:
    """The smallest k a layer may have: ceil(k_floor × clusters), and never below 2 (one centroid encodes
    nothing)."""
    return max(2, math.ceil(k_floor * clusters - 1e-9))


def k_schedule(k1: int, delta: float, clusters: int, k_floor: float = 1.5) -> list[int]:
    """k of each layer: k1, then floor(δ · k) per layer, stopping before the first k under the floor.

    The bottom layer is always there. Because δ < 1 every step strictly shrinks k, so the list is finite."""
    floor = k_floor_value(clusters, k_floor)
    ks = [int(k1)]
    while True:
        nxt = int(math.floor(ks[-1] * delta))
        if nxt < floor or nxt >= ks[-1]:
            return ks
        ks.append(nxt)


# ------------------------------------------------------------------------------------ validation
def _int(cfg: MBNConfig, key: str, lo: int) -> None:
    v = getattr(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{key} must be an integer >= {lo}, but got {key}={v!r} ({cfg.loc(key)})")


def _float(cfg: MBNConfig, key: str, lo: float, hi: float | None, lo_open: bool, hi_open: bool) -> None:
    v = getattr(cfg, key)
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    text = f"{lb}{lo:g}, {'inf' if hi is None else format(hi, 'g')}{rb}"
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        raise ConfigError(f"{key} must be a number in {text}, but got {key}={v!r} ({cfg.loc(key)})")
    object.__setattr__(cfg, key, float(v))
