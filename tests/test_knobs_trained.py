"""Knob directions on a trained network: the documented effect of each method's main knobs, checked on a
CIFAR ResNet-20 (1x8x8 inputs, 10 classes) trained on scikit-learn's digits to well above chance, with
contexts from the runner's factory on the digits splits (labels available).

The tests of each method's own file show the same directions on untrained nets and synthetic data; here
the importances, sensitivities and gate pressures come from a network whose weights mean something:

- SR-init: a larger τ removes at least as many blocks (the chosen sets are nested); the block
  importances Δ_b differ, and removing the two lowest-Δ blocks keeps more accuracy than removing the
  two highest-Δ ones;
- LNPT: a larger ``ratio`` removes more MACs and params, a larger ``macs_fraction`` keeps more; the
  default (teacher-guided) ranking keeps more accuracy right after pruning (no retraining) than the
  reversed ranking or a random one with the same per-layer counts;
- iterative: a larger α (accuracy exponent of the scores ΔP·acc^α, ΔMACs·acc^α) chooses candidates
  that lose less validation accuracy and remove fewer params;
- CAT: λ = 0 removes nothing and a larger λ removes more; β = 0 removes no block; γ = 1 cuts MACs by a
  larger fraction than params, γ = 0 the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import nets
import pytest
import torch

import sweep.methods.lnpt as lnpt_mod
from sweep.config import TrainConfig
from sweep.data import DataSplits, load_dataset, make_loader
from sweep.engine.groups import ChannelGraph
from sweep.engine.skip import skipped_layers
from sweep.measure import accuracy, count_macs, count_params
from sweep.methods import PruneResult, get_method
from sweep.methods.context import make_loaders
from sweep.models import build_model
from sweep.train import train

SHAPE = (1, 8, 8)
NUM_CLASSES = 10
BATCH = 64  # the contexts' loaders and fine-tune batch (CAT: 18 steps an epoch on digits' 1,150 training items)
MIN_ACCURACY = 0.85  # the premise: the network is trained (chance is 0.10)


def example():
    return torch.zeros(1, *SHAPE)


@dataclass
class Trained:
    """The trained network's weights, the digits splits and the dense figures every result is compared to."""

    state: dict
    splits: DataSplits
    val_accuracy: float
    params: int
    macs: int

    def model(self):
        m = build_model("cifar_resnet20", num_classes=NUM_CLASSES, in_channels=1, input_size=8)
        m.load_state_dict(self.state)
        return m.eval()

    def val_loader(self):
        return make_loader(self.splits.val, 256, shuffle=False)

    def accuracy(self, model) -> float:
        return accuracy(model.eval(), self.val_loader())


@pytest.fixture(scope="module")
def trained() -> Trained:
    """ResNet-20 trained for 3 epochs on digits (seeded; about 0.97 validation accuracy)."""
    splits = load_dataset("digits", None, seed=0)
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=NUM_CLASSES, in_channels=1, input_size=8)
    train(model, make_loader(splits.train, 32, shuffle=True, seed=0), epochs=3, lr=0.05)
    model.eval()
    t = Trained(state={k: v.clone() for k, v in model.state_dict().items()}, splits=splits, val_accuracy=0.0,
                params=count_params(model), macs=count_macs(model, example()))
    t.val_accuracy = t.accuracy(model)
    assert t.val_accuracy >= MIN_ACCURACY, f"the network must be trained, but reached {t.val_accuracy:.3f}"
    return t


class Runs:
    """One pruning run per (method, knob values) on a fresh copy of the trained network, cached."""

    def __init__(self, trained: Trained):
        self.t = trained
        self._cache: dict = {}

    def context(self, model, method: str, seed: int = 0):
        lo = make_loaders(self.t.splits.train, self.t.splits.val, labels=True, batch_size=BATCH, seed=seed)
        return nets.make_ctx(model, method=method, loaders=lo, shape=SHAPE, num_classes=NUM_CLASSES, seed=seed,
                             batch_size=BATCH, finetune_config=TrainConfig(epochs=1, lr=0.01, batch_size=BATCH))

    def __call__(self, method: str, **values) -> PruneResult:
        key = (method, tuple(sorted(values.items())))
        if key not in self._cache:
            spec = get_method(method)
            model = self.t.model()
            ctx = self.context(model, method)
            self._cache[key] = spec.prune(model, example(), spec.make_config(values), ctx)
        return self._cache[key]

    def kept(self, method: str, **values) -> tuple[float, float]:
        """(params kept, MACs kept) as fractions of the trained dense network."""
        m = self(method, **values).model
        return count_params(m) / self.t.params, count_macs(m, example()) / self.t.macs


@pytest.fixture(scope="module")
def runs(trained) -> Runs:
    return Runs(trained)


# ----------------------------------------------------------------------------- SR-init: tau
TAUS = (0.02, 0.1, 0.3)


def test_sr_init_larger_tau_removes_at_least_as_many_blocks(runs):
    results = [runs("sr_init", tau=tau) for tau in TAUS]
    removed = [set(r.info["removed"]) for r in results]
    assert all(a <= b for a, b in zip(removed, removed[1:])), removed  # nested: a larger tau keeps removing them
    assert len(removed[-1]) > len(removed[0]), removed  # and tau moves the result on this net
    for tau, r in zip(TAUS, results):  # the rule on the measured importances: removable and delta <= tau
        want = {b["index"] for b in r.info["blocks"] if b["removable"] and b["delta"] <= tau + 1e-9}
        assert set(r.info["removed"]) == want
    macs = [runs.kept("sr_init", tau=tau)[1] for tau in TAUS]
    assert macs[0] >= macs[1] >= macs[2] and macs[2] < 1.0, macs


def test_sr_init_importances_differ_and_rank_the_blocks(runs, trained):
    blocks = [b for b in runs("sr_init", tau=TAUS[0]).info["blocks"] if b["removable"]]
    deltas = [b["delta"] for b in blocks]
    assert max(deltas) - min(deltas) >= 0.05, deltas  # the criterion sees a difference between blocks
    highest = [b["index"] for b in sorted(blocks, key=lambda b: (-b["delta"], b["index"]))[:2]]
    # the ranking is compared on the removal alone: no re-fit, no fine-tuning (recipe "sweep" leaves it to
    # the runner)
    low = runs("sr_init", tau=1.0, max_removed=2, reconstruct=False)  # the two lowest deltas
    high = runs("sr_init", remove_blocks=tuple(highest), reconstruct=False)
    assert sorted(low.info["removed"]) != sorted(highest)
    acc_low, acc_high = trained.accuracy(low.model), trained.accuracy(high.model)
    assert acc_low >= acc_high + 0.05, (acc_low, acc_high)
    # the re-fit (default) makes up for much of the loss of the blocks that mattered most
    refit = trained.accuracy(runs("sr_init", remove_blocks=tuple(highest)).model)
    assert refit >= acc_high + 0.05, (refit, acc_high)


# ----------------------------------------------------------------------------- LNPT: ratio, macs_fraction
@pytest.mark.parametrize("knob, values, sign", [
    ("ratio", (0.2, 0.4, 0.6), -1),  # a larger ratio removes more: less kept
    ("macs_fraction", (0.3, 0.5, 0.7), +1),  # a larger fraction keeps more
])
def test_lnpt_target_moves_macs_and_params(runs, knob, values, sign):
    kept = [runs.kept("lnpt", epochs=0, **{knob: v}) for v in values]
    params = [p for p, _ in kept]
    macs = [m for _, m in kept]
    for seq in (params, macs):
        steps = [sign * (b - a) for a, b in zip(seq, seq[1:])]
        assert all(s > 0 for s in steps), (knob, values, kept)
    if knob == "macs_fraction":
        for v, m in zip(values, macs):
            assert abs(m - v) <= 0.03 * v, (v, m)


def _prune_like(trained: Trained, ranking, kept: dict, pick) -> float:
    """Accuracy (no retraining) of the trained net with ``pick(scores, n)`` units removed from each group,
    where the group keeps ``kept[group]`` units."""
    model = trained.model()
    graph = ChannelGraph(model, example(), ignored_layers=skipped_layers(model, example()))
    sel = {g: pick(ranking[g.name], g.size - kept[g.name]) for g in graph if g.size > kept[g.name]}
    assert sel
    graph.prune(sel)
    return trained.accuracy(model)


def test_lnpt_criterion_keeps_more_accuracy_than_reversed_or_random(runs, trained, monkeypatch):
    """The default criterion (teacher Fisher) on the trained net: pruning the lowest-scored channels
    keeps more accuracy right after pruning than pruning the highest-scored ones, or random ones, with
    the same number of channels removed from every layer (the comparison is about the ranking)."""
    recorded: dict = {}
    scores = lnpt_mod.teacher_fisher_scores

    def spy(*args, **kwargs):
        out = scores(*args, **kwargs)
        recorded.update(out)
        return out

    monkeypatch.setattr(lnpt_mod, "teacher_fisher_scores", spy)
    spec = get_method("lnpt")
    model = trained.model()
    # without the layer re-fit, which would make up for much of any ranking's damage
    res = spec.prune(model, example(), spec.make_config({"ratio": 0.3, "epochs": 0, "reconstruct": False}),
                     runs.context(model, "lnpt"))
    assert res.info["criterion"] == "teacher_fisher" and recorded
    kept = {name: round(r * recorded[name].numel()) for name, r in res.info["layer_ratios"].items()}
    acc = trained.accuracy(res.model)
    lowest = _prune_like(trained, recorded, kept, lambda s, n: torch.argsort(s, stable=True)[:n].tolist())
    assert lowest == pytest.approx(acc)  # the same counts and the lowest scores: LNPT's own result
    reversed_ = _prune_like(trained, recorded, kept,
                            lambda s, n: torch.argsort(s, descending=True, stable=True)[:n].tolist())
    rand = [_prune_like(trained, recorded, kept,
                        lambda s, n, r=r: torch.randperm(s.numel(), generator=torch.Generator().manual_seed(r))[:n]
                        .tolist()) for r in range(5)]
    assert acc >= reversed_ + 0.1, (acc, reversed_)
    assert acc > sum(rand) / len(rand), (acc, rand)


@pytest.mark.parametrize("method, values", [
    ("lnpt", {"ratio": 0.3, "epochs": 0}),  # the layers that lost inputs, to the teacher's outputs
    ("magnitude", {"ratio": 0.3}),  # every layer, to the unpruned network's outputs
])
def test_reconstruction_keeps_more_accuracy_right_after_pruning(runs, trained, method, values):
    """The layer re-fit: on the trained net, the same channels removed, the re-fitted network is more
    accurate before any training step than the one left as pruned."""
    spec = get_method(method)
    accs = {}
    for on in (False, True):
        model = trained.model()
        res = spec.prune(model, example(), spec.make_config({**values, "reconstruct": on}),
                         runs.context(model, method))
        accs[on] = (trained.accuracy(res.model), res.info["channels"])
        assert ("layer_reconstruction" in res.info) == on or method == "lnpt"
    assert accs[True][1] == accs[False][1]
    assert accs[True][0] >= accs[False][0] + 0.1, accs


# ----------------------------------------------------------------------------- iterative: alpha
ALPHAS = (1.0, 50.0)  # the knob's ends; on this net the paper's 20 still chooses what 1 does
ONE_STEP = {"iterations": 1, "epochs_per_iter": 0, "alpha_decay": 0.0, "n_params": 3, "n_macs": 3}


def test_iterative_higher_alpha_loses_less_accuracy(runs, trained):
    """score = ΔP·acc^α (and ΔMACs·acc^α): a higher α weighs accuracy more against the gain, so one step
    with no fine-tuning loses less validation accuracy.  (How many params it removes is not ordered: the
    candidate that keeps accuracy may remove more or fewer -- seen both ways on nets trained alike.)"""
    lost = []
    for alpha in ALPHAS:
        info = runs("iterative", alpha=alpha, **ONE_STEP).info
        first, last = info["trajectory"][0], info["trajectory"][-1]
        assert first["quality"] == pytest.approx(trained.val_accuracy)
        assert info["iteration_details"][0]["selected"]
        assert last["params"] < first["params"]  # each α's step removes something
        lost.append(first["quality"] - last["quality"])
    assert lost[0] > lost[1], (ALPHAS, lost)


# ----------------------------------------------------------------------------- CAT: lambda, beta, gamma
CAT = {"epochs": 2}


def test_cat_lambda_zero_removes_nothing_and_larger_lambda_removes_more(runs):
    dense = runs("cat", lam=0.0, **CAT)
    assert runs.kept("cat", lam=0.0, **CAT) == (1.0, 1.0)
    assert dense.info["final_structure"]["blocks_removed"] == []
    (p_low, m_low), (p_high, m_high) = runs.kept("cat", lam=0.3, **CAT), runs.kept("cat", lam=3.0, **CAT)
    assert m_low <= 1.0 and p_low <= 1.0
    assert m_high < m_low and p_high < p_low, ((p_low, m_low), (p_high, m_high))


def test_cat_beta_zero_removes_no_block(runs):
    res = runs("cat", lam=2.0, beta=0.0, **CAT)
    assert res.info["final_structure"]["blocks_removed"] == []
    assert runs.kept("cat", lam=2.0, beta=0.0, **CAT)[0] < 1.0  # channels did go
    # the same pressure with the default beta removes blocks on this net: beta = 0 is what keeps them
    assert runs("cat", lam=2.0, gamma=0.0, **CAT).info["final_structure"]["blocks_removed"]


def test_cat_gamma_balances_macs_against_params(runs):
    p1, m1 = runs.kept("cat", lam=2.0, gamma=1.0, **CAT)  # expected MACs only
    p0, m0 = runs.kept("cat", lam=2.0, gamma=0.0, **CAT)  # expected params only
    assert (1 - m1) > (1 - p1), (p1, m1)  # gamma = 1: MACs cut by a larger fraction than params
    assert (1 - p0) > (1 - m0), (p0, m0)  # gamma = 0: the reverse
    assert m1 / p1 < m0 / p0, ((p1, m1), (p0, m0))
