"""TPE for sweeps whose trials may stop early (``search.scheduler: mo_asha``): the good set holds finished
trials only.

Optuna's TPE splits the trials it has seen into a "good" set (the best ``gamma(n)`` of the ``n`` finished
ones, ``ceil(0.1 n)`` by default) and the rest, and samples where the good set's density beats the rest's.
Trials that successive halving stopped at a rung are told as PRUNED without values (see
:func:`sweep.driver._sweep_search`), and Optuna fills what its finished trials leave of the good set with
pruned ones, ranked by their last intermediate value: a multi-objective study has none to rank by, so every
pruned trial scores the same and the earliest ones fill it, in trial order.  Under successive halving that is
the common case early in a sweep -- rung 0 stops candidates within seconds, while the few that go on take all
their fine-tune epochs to finish -- and the good set is then made of the first candidates the rungs
stopped, the opposite of what it should hold.

:class:`EarlyStopTPESampler` keeps Optuna's split and caps the good set at the trials that finished inside
their budgets: while there are fewer of those than ``gamma(n)``, the good set is just them (empty at first:
TPE then samples from its prior, away from where the stopped trials lie), and pruned or infeasible trials
stay in the rest.  With enough finished trials the split is Optuna's own.  A reconstruction for early-stopped
multi-objective sweeps, not taken from a paper; ``bench/search_efficiency.py`` measures MO-ASHA sweeps with
it (bench/README.md).
"""

from __future__ import annotations

import math
import warnings

import optuna
from optuna.trial import TrialState


def optuna_gamma(n: int, objectives: int) -> int:
    """Optuna's default size of TPE's good set among ``n`` finished trials (``default_gamma`` for one
    objective, ``default_gamma_multiobjective`` for several; optuna/samplers/_tpe/sampler.py)."""
    return min(math.ceil(0.1 * n), 25) if objectives <= 1 else math.ceil(0.1 * n)


def finished_in_budget(study: optuna.Study) -> int:
    """The study's COMPLETE trials that keep every constraint (Optuna puts the others with the infeasible)."""
    return sum(all(v <= 0 for v in (t.constraints or {}).values())
               for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


class EarlyStopTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE with its good set capped at the finished trials that keep their budgets (see the module)."""

    def __init__(self, **kwargs):
        if "gamma" in kwargs:
            raise TypeError("EarlyStopTPESampler sets its own gamma")
        with warnings.catch_warnings():  # `gamma` is deprecated since Optuna 4.9 (to go in 6.0: pyproject pins <6)
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__(gamma=self.good_set_size, **kwargs)
        self._study: optuna.Study | None = None

    def good_set_size(self, n: int) -> int:
        """Optuna's ``gamma(n)``, but no more than the finished trials inside their budgets."""
        if self._study is None:  # outside sample_*: Optuna's own
            return optuna_gamma(n, 2)
        return min(optuna_gamma(n, len(self._study.directions)), finished_in_budget(self._study))

    def sample_relative(self, study, trial, search_space):
        self._study = study
        try:
            return super().sample_relative(study, trial, search_space)
        finally:
            self._study = None

    def sample_independent(self, study, trial, param_name, param_distribution):
        self._study = study
        try:
            return super().sample_independent(study, trial, param_name, param_distribution)
        finally:
            self._study = None
