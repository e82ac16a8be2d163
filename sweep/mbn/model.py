"""Multilayer bootstrap network (MBN) with a k-means application, fitted without labels.

Zhang, "Multilayer bootstrap networks", arXiv 1408.0848 (the network), and "Unsupervised model compression
for multilayer bootstrap networks", arXiv 1503.06452 (MBN + application as a black-box teacher).

Known (the abstracts, METHODS.md §5): L layers, each of V independent *k-centroids clusterings*; a clustering
draws k data points at random as its centroids, on a random subset of the features, and encodes every point
one-hot by its nearest centroid; the V one-hot codes are concatenated (V ones per layer) and feed the next
layer; k shrinks from bottom to top; the top is a linear reduction, preferably PCA; the application clusters
the PCA output. Defaults and the k schedule: :mod:`sweep.mbn.config`.

Our design (a *reconstruction*: the papers' bodies and the author's MATLAB code were not read):

- **Bottom (dense) layer**: nearest = smallest Euclidean distance on the clustering's feature subset
  (``round(feature_ratio · D)`` input features drawn without replacement).
- **Sparse layers**: nearest = most shared ones, the inner product of one-hot codes (the author's
  similarity, "the number of shared nearest centroids"; METHODS.md §5 measured Euclidean distance on a
  random subset of a one-hot layer collapsing to clustering accuracy 0.148 on digits).
- **What a feature subset is on a one-hot layer.** A layer's output is V categorical features (clustering
  v's centroid index), one-hot encoded. We draw the subset among those V *clusterings* —
  ``round(feature_ratio · V)`` of them — not among the V·k binary columns. Drawing columns would give every
  centroid a different number of visible ones (binomial around ``feature_ratio · V``), and the similarity
  would favour centroids that happen to show more ones: the same bias that makes Euclidean distance
  collapse, turned around. With a subset of clusterings every restricted code has exactly |S| ones, so the
  shared-ones count is |S| minus the Hamming distance and Euclidean distance and inner product pick the
  same centroid. The count is computed on integer index arrays: shared(x, c) = Σ_{j∈S} [x_j = c_j].
- **Ties** (frequent: counts are integers) go to the lowest centroid index, in every code path.
- **Top**: scikit-learn PCA (seeded) of the top layer's one-hot codes to ``out_dim`` dimensions; the
  application is scikit-learn k-means (``kmeans_init`` restarts, seeded) on that output. A new point's
  cluster is its nearest k-means centre; the training points' labels are assigned the same way, so
  predicting the training set reproduces them exactly.
- **Random draws**: one numpy ``default_rng(seed)`` stream, layer by layer, clustering by clustering:
  centroids (``choice(N, k, replace=False)``) then the feature subset (sorted). Fit and predict are
  deterministic for a seed on one machine (float sums are exact on inputs like 8-bit pixels; on arbitrary
  floats a different BLAS may break exact ties differently).

Prediction is vectorised in torch and runs on CPU or CUDA, batched so that memory stays bounded:

- dense layer: for a chunk of clusterings, ``argmax_m (x_S · c_S − ½‖c_S‖²)`` by one batched matrix product
  (‖x_S‖² is the same for every centroid of a clustering and drops out);
- sparse layers: no dense N × (V·k) one-hot matrix is formed. Each layer keeps an inverted index (CSR): for
  every (input clustering j, value a) the list of (clustering v, centroid m) whose centroid has value a at
  j ∈ S_v. A point's shared-ones counts are a ``bincount`` of the lists its V input values select: the
  work is the number of actual matches, not V·k·|S| comparisons.

Save/load writes plain tensors and numbers with ``torch.save`` and reads them with
``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataError
from .config import MBNConfig

FORMAT = "sweep-mbn"
FORMAT_VERSION = 1
# Bounds on temporary tensors per step (elements): scores of a chunk, matches of a batch.
SCORE_CAP = 1 << 22
HIT_CAP = 1 << 23


# ------------------------------------------------------------------------------------------ layers
@dataclass
class DenseLayer:
    """The bottom layer: clusterings on random subsets of the input features, Euclidean distance."""

    points: torch.Tensor  # U × D: the training points that are some clustering's centroid
    centroids: torch.Tensor  # V × k: rows of ``points``
    subsets: torch.Tensor  # V × s: input feature indices (sorted)

    def __post_init__(self):
        self._compile()

    @property
    def V(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def k(self) -> int:
        return int(self.centroids.shape[1])

    def _compile(self) -> None:
        # restricted centroids V × k × s and ½‖c_S‖², built in chunks to bound the V × k × D intermediate
        V, k = self.centroids.shape
        s = self.subsets.shape[1]
        csub = torch.empty(V, k, s, dtype=self.points.dtype, device=self.points.device)
        step = max(1, SCORE_CAP // max(1, k * self.points.shape[1]))
        for g in range(0, V, step):
            rows = self.points[self.centroids[g:g + step]]  # g × k × D
            idx = self.subsets[g:g + step, None, :].expand(-1, k, -1)
            csub[g:g + step] = torch.gather(rows, 2, idx)
        self.csub = csub
        self.half_norm = 0.5 * (csub * csub).sum(-1)  # V × k

    def to(self, device) -> "DenseLayer":
        return DenseLayer(self.points.to(device), self.centroids.to(device), self.subsets.to(device))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (N × V, int64): the nearest centroid of every clustering."""
        n = x.shape[0]
        V, k = self.centroids.shape
        out = torch.empty(n, V, dtype=torch.long, device=x.device)
        batch = max(1, min(n, SCORE_CAP // k))
        for b in range(0, n, batch):
            xb = x[b:b + batch]
            group = max(1, min(V, SCORE_CAP // (xb.shape[0] * k)))
            for g in range(0, V, group):
                xs = xb[:, self.subsets[g:g + group]].transpose(0, 1)  # g × B × s
                scores = torch.bmm(xs, self.csub[g:g + group].transpose(1, 2))  # g × B × k
                scores -= self.half_norm[g:g + group, None, :]
                out[b:b + batch, g:g + group] = scores.argmax(-1).T  # argmax: first index on ties
        return out

    def state(self) -> dict:
        return {"kind": "dense", "points": self.points.cpu().contiguous(),
                "centroids": _compact(self.centroids), "subsets": _compact(self.subsets)}


@dataclass
class SparseLayer:
    """A layer on one-hot codes: clusterings on random subsets of the previous layer's clusterings,
    similarity = shared ones (equal indices)."""

    centroid_codes: torch.Tensor  # V × k × s: the centroids' input codes on their clustering's subset
    subsets: torch.Tensor  # V × s: previous-layer clustering indices (sorted)
    k_prev: int  # values an input code takes (the previous layer's k)
    v_prev: int  # input clusterings (the previous layer's V)

    def __post_init__(self):
        self._compile()

    @property
    def V(self) -> int:
        return int(self.centroid_codes.shape[0])

    @property
    def k(self) -> int:
        return int(self.centroid_codes.shape[1])

    def _compile(self) -> None:
        # the inverted index: row (j, a) lists the columns v·k + m whose centroid m of clustering v has
        # value a at input clustering j ∈ S_v
        V, k, s = self.centroid_codes.shape
        dev = self.centroid_codes.device
        j = self.subsets[:, None, :].expand(V, k, s)
        rows = (j * self.k_prev + self.centroid_codes).reshape(-1)
        cols = (torch.arange(V, device=dev)[:, None, None] * k + torch.arange(k, device=dev)[None, :, None])
        cols = cols.expand(V, k, s).reshape(-1)
        order = torch.argsort(rows, stable=True)
        self.cols = cols[order].contiguous()
        counts = torch.bincount(rows, minlength=self.v_prev * self.k_prev)
        self.crow = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), counts.cumsum(0)])
        self.offsets = torch.arange(self.v_prev, device=dev) * self.k_prev

    def to(self, device) -> "SparseLayer":
        return SparseLayer(self.centroid_codes.to(device), self.subsets.to(device), self.k_prev, self.v_prev)

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (N × V, int64) of points given by their previous-layer codes (N × v_prev)."""
        n = codes.shape[0]
        V, k = self.V, self.k
        out = torch.empty(n, V, dtype=torch.long, device=codes.device)
        width = V * k
        batch = max(1, min(n, SCORE_CAP // width))
        for b in range(0, n, batch):
            rows = codes[b:b + batch] + self.offsets  # B × v_prev
            start = self.crow[rows]
            length = self.crow[rows + 1] - start
            per_point = length.sum(1)
            # sub-batches whose matches fit HIT_CAP (a point's matches are bounded by V·k·s)
            ends = _split_by_total(per_point, HIT_CAP)
            lo = 0
            for hi in ends:
                out[b + lo:b + hi] = self._argmax_shared(start[lo:hi], length[lo:hi], width)
                lo = hi
        return out

    def _argmax_shared(self, start: torch.Tensor, length: torch.Tensor, width: int) -> torch.Tensor:
        bsz, vin = start.shape
        length = length.reshape(-1)
        seg = torch.repeat_interleave(torch.arange(bsz * vin, device=start.device), length)
        # position of each match inside the inverted index: its list's start plus its rank in the list
        first = torch.cumsum(length, 0) - length
        pos = torch.arange(seg.numel(), device=start.device) - first[seg] + start.reshape(-1)[seg]
        flat = (seg // vin) * width + self.cols[pos]
        shared = torch.bincount(flat, minlength=bsz * width).view(bsz, self.V, self.k)
        return shared.argmax(-1)  # first index on ties

    def state(self) -> dict:
        return {"kind": "sparse", "centroid_codes": _compact(self.centroid_codes), "subsets": _compact(self.subsets),
                "k_prev": int(self.k_prev), "v_prev": int(self.v_prev)}


def _split_by_total(per_point: torch.Tensor, cap: int) -> list[int]:
    """Ends of consecutive groups of points whose summed matches stay under ``cap`` (at least one point)."""
    total = torch.cumsum(per_point, 0).cpu().numpy()
    ends, base, i, n = [], 0, 0, len(total)
    while i < n:
        j = int(np.searchsorted(total, base + cap, side="right"))
        j = max(j, i + 1)
        ends.append(j)
        base = int(total[j - 1])
        i = j
    return ends


def _compact(t: torch.Tensor) -> torch.Tensor:
    """An index tensor in the smallest signed integer type that holds it (for saving)."""
    t = t.cpu().contiguous()
    hi = int(t.max()) if t.numel() else 0
    for dtype in (torch.int16, torch.int32):
        if hi <= torch.iinfo(dtype).max:
            return t.to(dtype)
    return t.to(torch.long)


# ------------------------------------------------------------------------------------------ MBN
class MBN:
    """MBN + k-means, fitted on unlabeled inputs; ``predict`` gives cluster indices.

    ``x`` anywhere is a float array or tensor of N points (N × D, or N × C × H × W: flattened)."""

    def __init__(self, config: MBNConfig | None = None, device: str | torch.device = "cpu"):
        self.config = config or MBNConfig()
        self.device = torch.device(device)
        self.layers: list[DenseLayer | SparseLayer] = []
        self.input_dim: int | None = None
        self.pca_weight: torch.Tensor | None = None  # (V · k_L) × out_dim: PCA components, transposed
        self.pca_bias: torch.Tensor | None = None  # out_dim: mean @ components.T
        self.centers: torch.Tensor | None = None  # clusters × out_dim: k-means centres
        # set by fit only (not saved): the training points' codes per layer, PCA output and labels
        self.train_codes_: list[torch.Tensor] = []
        self.train_embedding_: torch.Tensor | None = None
        self.train_labels_: torch.Tensor | None = None

    # ------------------------------------------------------------------------------ fitting
    @property
    def ks(self) -> list[int]:
        return [layer.k for layer in self.layers]

    @property
    def fitted(self) -> bool:
        return self.centers is not None

    def fit(self, x: Any, log: Callable[[str], None] | None = None) -> "MBN":
        """Fit the layers, the PCA and the k-means application on ``x`` (no labels anywhere)."""
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        cfg = self.config
        x = self._inputs(x, fitting=True)
        n, d = x.shape
        plan = cfg.resolve(n)
        rng = np.random.default_rng(cfg.seed)
        self.input_dim = d
        self.layers, self.train_codes_ = [], []
        codes = None
        with torch.no_grad():
            for i, k in enumerate(plan.ks):
                t0 = _now()
                width = d if i == 0 else cfg.V
                s = max(1, min(width, round(cfg.feature_ratio * width)))
                cents = np.empty((cfg.V, k), dtype=np.int64)
                subs = np.empty((cfg.V, s), dtype=np.int64)
                for v in range(cfg.V):
                    cents[v] = rng.choice(n, size=k, replace=False)
                    subs[v] = np.sort(rng.choice(width, size=s, replace=False))
                cents_t = torch.from_numpy(cents).to(self.device)
                subs_t = torch.from_numpy(subs).to(self.device)
                if i == 0:
                    used, local = torch.unique(cents_t, return_inverse=True)  # keep only centroid points
                    layer = DenseLayer(x[used].clone(), local, subs_t)
                    codes = layer.encode(x)
                else:
                    prev_k = self.layers[-1].k
                    cc = codes[cents_t[:, :, None], subs_t[:, None, :]]  # V × k × s
                    layer = SparseLayer(cc, subs_t, prev_k, cfg.V)
                    codes = layer.encode(codes)
                self.layers.append(layer)
                self.train_codes_.append(codes)
                if log:
                    log(f"mbn layer {i + 1}/{len(plan.ks)}: k={k}, V={cfg.V}, subset={s} of {width} "
                        f"({'inputs' if i == 0 else 'clusterings'}), {_now() - t0:.1f} s")
            # top: PCA of the one-hot codes, fitted by scikit-learn on a dense matrix
            k_top = self.layers[-1].k
            onehot = np.zeros((n, cfg.V * k_top), dtype=np.float64)
            cols = (codes.cpu().numpy() + np.arange(cfg.V) * k_top)
            onehot[np.arange(n)[:, None], cols] = 1.0
            pca = PCA(n_components=plan.out_dim, random_state=cfg.seed).fit(onehot)
            del onehot
            self.pca_weight = torch.as_tensor(pca.components_.T, dtype=torch.float32, device=self.device).contiguous()
            self.pca_bias = torch.as_tensor(pca.mean_ @ pca.components_.T, dtype=torch.float32, device=self.device)
            z = self._embed(codes)
            km = KMeans(n_clusters=cfg.clusters, n_init=cfg.kmeans_init, random_state=cfg.seed)
            km.fit(z.cpu().numpy().astype(np.float64))
            self.centers = torch.as_tensor(km.cluster_centers_, dtype=torch.float32, device=self.device)
            self.train_embedding_ = z
            self.train_labels_ = self._assign(z)
        return self

    # ------------------------------------------------------------------------------ prediction
    def codes(self, x: Any) -> list[torch.Tensor]:
        """The codes of every layer (each N × V, int64: the nearest centroid's index per clustering)."""
        self._check_fitted()
        x = self._inputs(x)
        out = []
        with torch.no_grad():
            c = x
            for layer in self.layers:
                c = layer.encode(c)
                out.append(c)
        return out

    def transform(self, x: Any) -> torch.Tensor:
        """The PCA output (N × out_dim)."""
        return self._embed(self.codes(x)[-1])

    def predict(self, x: Any) -> torch.Tensor:
        """Cluster indices (N, int64): MBN and its k-means application."""
        self._check_fitted()
        x = self._inputs(x)
        with torch.no_grad():
            c = x
            for layer in self.layers:
                c = layer.encode(c)
            return self._assign(self._embed(c))

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        k_top = self.layers[-1].k
        idx = codes + torch.arange(codes.shape[1], device=codes.device) * k_top
        # the one-hot row times the components is the sum of V rows of them: an embedding bag
        z = torch.nn.functional.embedding_bag(idx, self.pca_weight, mode="sum")
        return z - self.pca_bias

    def _assign(self, z: torch.Tensor) -> torch.Tensor:
        # exact squared distances (not the expanded form) so that nearly equidistant points are stable
        out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
        step = max(1, SCORE_CAP // (self.centers.numel()))
        for b in range(0, z.shape[0], step):
            diff = z[b:b + step, None, :] - self.centers[None]
            out[b:b + step] = (diff * diff).sum(-1).argmin(-1)
        return out

    # ------------------------------------------------------------------------------ io
    def to(self, device) -> "MBN":
        self.device = torch.device(device)
        self.layers = [layer.to(self.device) for layer in self.layers]
        for name in ("pca_weight", "pca_bias", "centers"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(self.device))
        return self

    def state_dict(self) -> dict:
        """Plain tensors, numbers and strings only (loadable with ``weights_only=True``)."""
        self._check_fitted()
        return {"format": FORMAT, "version": FORMAT_VERSION, "config": self.config.settings(),
                "input_dim": int(self.input_dim), "layers": [layer.state() for layer in self.layers],
                "pca_weight": self.pca_weight.cpu().contiguous(), "pca_bias": self.pca_bias.cpu().contiguous(),
                "centers": self.centers.cpu().contiguous()}

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), str(path))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "MBN":
        """Read a saved MBN. Nothing is unpickled: ``torch.load(weights_only=True)``."""
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # a missing file, or anything that is not plain tensors
            raise DataError(f"MBN file must be a saved MBN, but got {type(e).__name__}: {e} ({path})") from None
        return cls.from_state(state, device=device, where=str(path))

    @classmethod
    def from_state(cls, state: Any, device: str | torch.device = "cpu", where: str = "MBN state") -> "MBN":
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise DataError(f"MBN file must hold format {FORMAT!r}, but got "
                            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r} ({where})")
        if state.get("version") != FORMAT_VERSION:
            raise DataError(f"MBN file must be version {FORMAT_VERSION}, but got version={state.get('version')!r} "
                            f"({where})")
        try:
            mbn = cls(MBNConfig(**state["config"], where=where), device="cpu")
            mbn.input_dim = int(state["input_dim"])
            for ls in state["layers"]:
                if ls["kind"] == "dense":
                    mbn.layers.append(DenseLayer(ls["points"].float(), ls["centroids"].long(), ls["subsets"].long()))
                else:
                    mbn.layers.append(SparseLayer(ls["centroid_codes"].long(), ls["subsets"].long(),
                                                  int(ls["k_prev"]), int(ls["v_prev"])))
            mbn.pca_weight, mbn.pca_bias, mbn.centers = state["pca_weight"], state["pca_bias"], state["centers"]
        except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as e:  # a damaged or foreign file
            raise DataError(f"MBN file must hold every part of a fitted MBN, but got {type(e).__name__}: {e} "
                            f"({where})") from None
        return mbn.to(device)

    # ------------------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("MBN is not fitted: call fit() or MBN.load() first")

    def _inputs(self, x: Any, fitting: bool = False) -> torch.Tensor:
        t = torch.as_tensor(x)
        if t.ndim < 2 or t.shape[0] < 1:
            raise DataError(f"MBN inputs must be an array of N points (N × D or N × C × H × W), but got shape "
                            f"{tuple(t.shape)}")
        t = t.reshape(t.shape[0], -1).to(device=self.device, dtype=torch.float32)
        if not fitting and t.shape[1] != self.input_dim:
            raise DataError(f"MBN inputs must have {self.input_dim} features (as fitted), but got "
                            f"{t.shape[1]} (shape {tuple(t.shape)})")
        if not bool(torch.isfinite(t).all()):
            raise DataError("MBN inputs must be finite, but got NaN or infinite values")
        return t.contiguous()


def _now() -> float:
    import time

    return time.perf_counter()


def flops_per_sample(mbn: MBN) -> int:
    """Multiply-adds of the bottom layer's distance products for one point (the dominant cost)."""
    first = mbn.layers[0]
    return int(first.V * first.k * first.subsets.shape[1]) if isinstance(first, DenseLayer) else 0


__all__ = ["MBN", "MBNConfig", "DenseLayer", "SparseLayer", "FORMAT", "FORMAT_VERSION", "flops_per_sample"]
