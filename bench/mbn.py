"""Compressive MBN, measured side by side: k-means on raw pixels, k-means on PCA, MBN + k-means, and small
MLP students trained on MBN's cluster indices (Zhang, arXiv 1503.06452; MBN: arXiv 1408.0848).

Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``sweep.data``'s loader; falls back to the
embedded digits, and says so, where the files are missing). Every subset is drawn without reading a label.

  fit set     --train points of the training split: every clustering (k-means, PCA + k-means, MBN) is fitted
              on it, and its clustering accuracy (Hungarian matching) and NMI are the clustering figures
  extra set   --extra further training points, unlabeled: MBN predicts their clusters, and the students train
              on fit + extra inputs with MBN's cluster indices as targets (the compression: the teacher labels
              unlabeled data, the student learns from it)
  test set    --test points of the test split, held out from everything: each method predicts them (k-means:
              nearest centre; MBN: its prediction path; students: argmax), giving test accuracy / NMI and the
              agreement with MBN's predictions

Latency: per-sample prediction time of MBN (``MBN.predict``: every layer's nearest-centroid search, PCA,
nearest k-means centre) and of each student (forward + argmax), same torch threads, same batch of test
inputs, the same protocol for all: calls are timed in blocks (a block lasts >= 20 ms, calibrated per
method), methods interleaved round after round, the median block mean over --repeats rounds, divided by
the batch. Speed-up = MBN per-sample time / student per-sample time at the same batch.

    python bench/mbn.py                        # Fashion-MNIST: fit 12,000, extra 24,000, test 2,000, V 500 (~15 min)
    python bench/mbn.py --quick                # fit 1,000, extra 3,000, test 1,000, V 100, one width (~1 min)
    python bench/mbn.py --dataset digits       # the embedded digits (fit 1,000, the rest of the training split)

Last line: ``mbn: kmeans_raw_acc=<a> mbn_acc=<b> student_agreement=<c> speedup=<x>`` — clustering accuracies on
the fit set, the best student's agreement with MBN on the test set, and its speed-up at the first --batches
value.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latency_efficiency import cpu_name  # noqa: E402  (bench/ is on sys.path: the script's folder)
from overhead import load as load_avg  # noqa: E402

# MBN's bottom-layer k as a share of the fit set: a fifteenth (800 of 12,000), not the papers' half. Coarser
# bottom partitions make MBN's clusters a function a small network can learn (agreement 0.943 at k1 = N/2 ->
# 0.97 at N/10-N/15, measured 2026-12-04, bench/README.md); our choice for the benchmark, not a paper's constant.
K1_SHARE = 15


# ------------------------------------------------------------------------------------------ data
def load_data(name: str, n_fit: int, n_extra: int, n_test: int, seed: int):
    """(x_fit, y_fit, x_extra, x_test, y_test, what): flattened float32 inputs; subsets drawn by a seeded
    permutation that reads no label. Falls back to digits where the Fashion-MNIST files are missing."""
    from sweep.data import load_dataset
    from sweep.errors import DataError

    note = ""
    if name == "fashion-mnist":
        try:
            splits = load_dataset("fashion-mnist", {"val_fraction": 0.0001}, seed=seed, stratify=False)
        except DataError as e:
            note = f"Fashion-MNIST unavailable ({str(e).split(';')[0]}); FELL BACK TO DIGITS"
            name = "digits"
    if name == "digits":
        splits = load_dataset("digits", {"val_fraction": 0.0001, "test_fraction": 0.25}, seed=seed,
                              stratify=False)
    xtr, ytr = (t.numpy() for t in splits.train.tensors)
    xte, yte = (t.numpy() for t in splits.test.tensors)
    rng = np.random.default_rng([seed, 0x3B7])
    perm = rng.permutation(len(xtr))
    n_fit = min(n_fit, len(xtr) // 2)
    n_extra = min(n_extra, len(xtr) - n_fit)
    fit, extra = perm[:n_fit], perm[n_fit:n_fit + n_extra]
    test = rng.permutation(len(xte))[:min(n_test, len(xte))]
    flat = lambda a: a.reshape(len(a), int(np.prod(a.shape[1:]))).astype(np.float32)  # noqa: E731  (0 rows too)
    return flat(xtr[fit]), ytr[fit], flat(xtr[extra]), flat(xte[test]), yte[test], name, note


# ------------------------------------------------------------------------------------------ student
def make_student(d: int, width: int, c: int, seed: int):
    """The model zoo's ``mlp`` (what ``mbn_fashion_mnist.yaml`` sweeps) at hidden width ``width``, on ``d``
    flat features."""
    import torch

    from sweep.models.mlp import MLP

    torch.manual_seed(seed)
    return MLP(c, in_channels=d, input_size=1, width=width)


def train_student(model, x, t, epochs: int, seed: int, batch: int = 128, lr: float = 1e-3):
    """Cross-entropy on the teacher's cluster indices (no label of the data set is read)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xs, ts = torch.as_tensor(x), torch.as_tensor(t)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=g)
        for i in range(0, len(xs), batch):
            idx = perm[i:i + batch]
            loss = torch.nn.functional.cross_entropy(model(xs[idx]), ts[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def student_predict(model, x):
    import torch

    with torch.inference_mode():
        return model(torch.as_tensor(x)).argmax(1)


# ------------------------------------------------------------------------------------------ timing
def time_per_sample(fns: dict, repeats: int, batch: int, min_block_s: float = 0.02) -> dict:
    """Per-sample seconds of each callable: blocks calibrated to >= min_block_s, methods interleaved (the
    order rotating each round), the median block mean over ``repeats`` rounds, divided by ``batch``."""
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        calls[name] = max(1, int(np.ceil(min_block_s / one)))
    names = list(fns)
    samples = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            fn, k = fns[n], calls[n]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[n].append((time.perf_counter() - t0) / k)
    return {n: statistics.median(v) / batch for n, v in samples.items()}


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "digits"))
    ap.add_argument("--train", type=int, default=12000, help="fit set size (default 12000)")
    ap.add_argument("--extra", type=int, default=24000,
                    help="unlabeled points MBN labels for the students (default 24000)")
    ap.add_argument("--test", type=int, default=2000, help="held-out test points")
    ap.add_argument("--V", type=int, default=500, help="MBN clusterings per layer (default 500)")
    ap.add_argument("--k1", type=int, default=None, help="MBN's bottom-layer k (default: a fifteenth of the fit "
                    "set, 800 of 12,000; see bench/README.md)")
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--widths", default="64,128,256", help="student hidden widths (two hidden layers each)")
    ap.add_argument("--epochs", type=int, default=15, help="student training epochs")
    ap.add_argument("--batches", default="1,256", help="prediction batch sizes timed; the first is the headline")
    ap.add_argument("--repeats", type=int, default=15, help="timing rounds")
    ap.add_argument("--min-speedup", type=float, default=1000.0, help="the best student is the most agreeing of "
                    "those at least this many times faster than MBN at the first batch (default 1000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for everything timed (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="fit 1000, extra 3000, test 1000, V 100, width 256, 8 epochs")
    args = ap.parse_args(argv)
    if args.quick:
        args.train, args.extra, args.test, args.widths, args.epochs, args.V = 1000, 3000, 1000, "256", 8, 100
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    import torch
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from sweep.mbn import MBN, MBNConfig, agreement, clustering_accuracy, nmi

    torch.set_num_threads(os.cpu_count() or 1)  # fitting, labelling and training: every core (not timed)
    t_start = time.time()
    print(f"# mbn  {_dt.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"python {platform.python_version()}")
    print(f"# CPU: {cpu_name()} ({os.cpu_count()} logical cores), torch threads={args.threads} when timed, "
          f"load avg at start {load_avg()} (1/5/15 min)")
    x_fit, y_fit, x_extra, x_test, y_test, name, note = load_data(args.dataset, args.train, args.extra, args.test,
                                                                   args.seed)
    if note:
        print(f"# NOTE: {note}")
    k1 = args.k1 or max(2, round(len(x_fit) / K1_SHARE))
    print(f"# data: {name}, {x_fit.shape[1]} features; fit set {len(x_fit)} points (sized for a 2-core machine: "
          f"MBN's bottom layer compares every point with V x k1 = {args.V} x {k1} centroids), "
          f"extra unlabeled {len(x_extra)}, held-out test {len(x_test)}; labels read only for the figures")
    c = args.clusters
    rows = []  # (name, fit acc, fit nmi, test acc, test nmi, test predictions)

    t0 = time.time()
    km = KMeans(n_clusters=c, n_init=10, random_state=args.seed).fit(x_fit)
    rows.append(("kmeans raw", km.labels_, km.predict(x_test), time.time() - t0))
    t0 = time.time()
    pca = PCA(n_components=c, random_state=args.seed).fit(x_fit)
    kmp = KMeans(n_clusters=c, n_init=10, random_state=args.seed).fit(pca.transform(x_fit))
    rows.append((f"kmeans pca{c}", kmp.labels_, kmp.predict(pca.transform(x_test)), time.time() - t0))

    t0 = time.time()
    cfg = MBNConfig(V=args.V, k1=k1, clusters=c, seed=args.seed)
    mbn = MBN(cfg).fit(x_fit)
    fit_s = time.time() - t0
    mbn_test = mbn.predict(x_test).numpy()
    rows.append(("mbn + kmeans", mbn.train_labels_.numpy(), mbn_test, fit_s))
    k1_what = f"fit set / {K1_SHARE:g}" if args.k1 is None else args.k1
    print(f"# MBN: V={cfg.V}, k per layer {mbn.ks} (k1 = {k1_what}, delta={cfg.delta}, floor "
          f"ceil({cfg.k_floor} x {c})), feature ratio {cfg.feature_ratio}, PCA to {c}, k-means {c}; "
          f"fit {fit_s:.1f} s")
    # prediction of fitted points (in other batches than the fit's) must give the fitted codes back
    same = int((mbn.predict(x_fit[:500]) == mbn.train_labels_[:500]).sum())
    print(f"# MBN predicts {same} of the first {min(500, len(x_fit))} fit points as fitted")
    t0 = time.time()
    t_extra = mbn.predict(x_extra).numpy() if len(x_extra) else np.zeros(0, dtype=np.int64)
    print(f"# MBN labelled the {len(x_extra)} extra points in {time.time() - t0:.1f} s")
    x_student = np.concatenate([x_fit, x_extra])
    t_student = np.concatenate([mbn.train_labels_.numpy(), t_extra])

    students = {}
    for w in widths:
        t0 = time.time()
        model = train_student(make_student(x_fit.shape[1], w, c, args.seed), x_student, t_student, args.epochs,
                              args.seed)
        params = sum(p.numel() for p in model.parameters())
        students[w] = (model, params)
        rows.append((f"student w={w}", student_predict(model, x_fit).numpy(), student_predict(model, x_test).numpy(),
                     time.time() - t0))

    # latency, per sample, same threads and batches for MBN and the students
    torch.set_num_threads(args.threads)
    lat = {}
    for b in batches:
        xb = torch.as_tensor(x_test[:b]) if b <= len(x_test) else torch.as_tensor(
            np.resize(x_test, (b, x_test.shape[1])))
        fns = {"mbn + kmeans": lambda xb=xb: mbn.predict(xb)}
        for w, (model, _) in students.items():
            fns[f"student w={w}"] = lambda xb=xb, model=model: student_predict(model, xb)
        lat[b] = time_per_sample(fns, args.repeats, b)

    lat_cols = "".join(f" {'ms/smp b' + str(b):>12}" for b in batches)
    print(f"\n{'method':<16}{'fit acc':>8}{'fit NMI':>8}{'test acc':>9}{'test NMI':>9}{'agree MBN':>10}"
          f"{'params':>11}{lat_cols}{'fit/train s':>12}")
    for nm, fit_pred, test_pred, secs in rows:
        w = int(nm.split("=")[1]) if nm.startswith("student") else None
        params = f"{students[w][1]:>11,}" if w else f"{'':>11}"
        times = "".join(f" {lat[b][nm] * 1e3:>12.4f}" if nm in lat[b] else f" {'':>12}" for b in batches)
        fit_acc = f"{clustering_accuracy(y_fit, fit_pred):>8.3f}"
        fit_nmi = f"{nmi(y_fit, fit_pred):>8.3f}"
        # students predict MBN's own indices; a k-means' indices are arbitrary, so it is matched to MBN's first
        agree = (agreement if w or nm.startswith("mbn") else clustering_accuracy)(mbn_test, test_pred)
        print(f"{nm:<16}{fit_acc}{fit_nmi}{clustering_accuracy(y_test, test_pred):>9.3f}"
              f"{nmi(y_test, test_pred):>9.3f}{agree:>10.3f}{params}{times}{secs:>12.1f}")
    print("# agree MBN: the fraction of test points with MBN's cluster index (k-means rows: after matching their "
          "clusters to MBN's, Hungarian)")

    # the best student, as `sweep select` picks within a budget: the most agreeing among the students at
    # least --min-speedup times faster than MBN at the first batch (none is: the most agreeing of all)
    agree_of = {w: agreement(mbn_test, student_predict(students[w][0], x_test).numpy()) for w in widths}
    speed_of = {w: lat[batches[0]]["mbn + kmeans"] / lat[batches[0]][f"student w={w}"] for w in widths}
    fast = [w for w in widths if speed_of[w] >= args.min_speedup] or widths
    best = max(fast, key=lambda w: (agree_of[w], -students[w][1]))
    best_agree = agree_of[best]
    speed = {b: lat[b]["mbn + kmeans"] / lat[b][f"student w={best}"] for b in batches}
    rule = (f"the most agreeing of those >= {args.min_speedup:g}x faster than MBN at batch {batches[0]}"
            if speed_of[best] >= args.min_speedup else f"none is {args.min_speedup:g}x faster: the most agreeing")
    print(f"\n# best student ({rule}): w={best} "
          f"({students[best][1]:,} params), agreement with MBN on the held-out test "
          f"set {best_agree:.3f} (on the fit set "
          f"{agreement(mbn.train_labels_.numpy(), student_predict(students[best][0], x_fit).numpy()):.3f})")
    print("# speed-up of the best student over MBN, per sample: "
          + ", ".join(f"batch {b}: {speed[b]:,.0f}x ({lat[b]['mbn + kmeans'] * 1e3:.3f} ms vs "
                      f"{lat[b][f'student w={best}'] * 1e6:.2f} us)" for b in batches))
    print(f"# total {time.time() - t_start:.0f} s; load avg at end {load_avg()}")
    km_acc = clustering_accuracy(y_fit, rows[0][1])
    mbn_acc = clustering_accuracy(y_fit, mbn.train_labels_.numpy())
    print(f"mbn: kmeans_raw_acc={km_acc:.3f} mbn_acc={mbn_acc:.3f} student_agreement={best_agree:.3f} "
          f"speedup={speed[batches[0]]:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
