"""What the sweep tells Optuna of a finished trial: live (the sweep's OptunaSearch) and on resume
(``study_with_history``) alike -- a trial successive halving stopped at a rung is PRUNED, without values."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("ray.tune.search.optuna")

from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from sweep.config import parse_config  # noqa: E402
from sweep.constraints import CONSTRAINTS_ATTR  # noqa: E402
from sweep.driver import CONSTRAINTS_KEY, RUNG, _sweep_search, _told  # noqa: E402
from sweep.results.schema import TrialRecord  # noqa: E402
from sweep.space import Told, study_with_history  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
S = optuna.trial.TrialState
OBJECTIVES = ["accuracy", "params"]


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


def searcher(sampler=None):
    return _sweep_search(OptunaSearch)(space=_space, metric=OBJECTIVES, mode=["max", "min"],
                                       sampler=sampler or optuna.samplers.RandomSampler(seed=0))


RUNG_REPORT = {RUNG: 1, "accuracy": 0.3, "params": 10.0, "partial_json": "{}"}
FINAL = {RUNG: 3, "accuracy": 0.9, "params": 10.0, "record_json": "{}"}


@pytest.mark.parametrize("result,error,state,values", [
    (RUNG_REPORT, False, S.PRUNED, None),                              # stopped by successive halving
    (FINAL, False, S.COMPLETE, [0.9, 10.0]),                            # its last report holds the record
    ({"accuracy": 0.8, "params": 5.0, "record_json": "{}"}, False, S.COMPLETE, [0.8, 5.0]),  # no scheduler
    (RUNG_REPORT, True, S.FAIL, None),                                  # a crash after a rung is a failure
    (None, True, S.FAIL, None),
])
def test_live_states(result, error, state, values):
    s = searcher()
    s.suggest("t1")
    s.on_trial_complete("t1", result=result, error=error)
    (t,) = s._ot_study.trials
    assert t.state == state
    assert t.values == values


@pytest.mark.parametrize("result", [{**RUNG_REPORT, CONSTRAINTS_KEY: [0.5, -1.0]},
                                    {**FINAL, CONSTRAINTS_KEY: [0.5, -1.0]}])
def test_constraint_values_reach_optuna_whatever_the_state(result):
    s = searcher()
    s.suggest("t1")
    s.on_trial_complete("t1", result=result)
    assert s._ot_study.trials[0].user_attrs[CONSTRAINTS_ATTR] == [0.5, -1.0]


def test_no_budget_sets_no_attribute_and_a_second_completion_changes_nothing():
    s = searcher()
    s.suggest("t1")
    s.on_trial_complete("t1", result={**RUNG_REPORT, CONSTRAINTS_KEY: []})
    s.on_trial_complete("t1", result=FINAL)  # Ray warns and ignores it
    (t,) = s._ot_study.trials
    assert t.state == S.PRUNED and CONSTRAINTS_ATTR not in t.user_attrs


def cfg():
    return parse_config({"name": "s", "model": {"name": "small_cnn"}, "dataset": "digits",
                         "search": {"objectives": OBJECTIVES},
                         "methods": {"magnitude": {"ratio": {"low": 0.1, "high": 0.9}}}}, source="space.yaml")


@pytest.mark.parametrize("status,state,values", [
    ("ok", "complete", [0.9, 100.0]),
    ("infeasible", "complete", [0.9, 100.0]),  # its constraint values mark it infeasible for Optuna
    ("stopped_early", "pruned", None),
    ("failed", "fail", None),
])
def test_resume_tells_what_the_live_sweep_told(status, state, values):
    rec = TrialRecord(sweep="s", trial_id="t1", trial_number=0, status=status, method="magnitude",
                      knobs={"ratio": 0.5}, accuracy=0.9, params=100, macs=200, latency_ms=1.0)
    told = _told(cfg(), rec)
    assert (told.state, told.values) == (state, values)
    storage, name = study_with_history(cfg(), [told], [], optuna.samplers.RandomSampler(seed=0))
    (t,) = optuna.load_study(study_name=name, storage=storage).trials
    assert t.state == {"complete": S.COMPLETE, "pruned": S.PRUNED, "fail": S.FAIL}[state]
    assert t.values == values
    assert t.params == {"magnitude.ratio": 0.5}


def test_resume_keeps_constraint_values_of_a_pruned_trial():
    told = Told("magnitude", {"ratio": 0.5}, None, (0.5, -1.0), "pruned")
    storage, name = study_with_history(cfg(), [told], [], optuna.samplers.RandomSampler(seed=0))
    (t,) = optuna.load_study(study_name=name, storage=storage).trials
    assert t.state == S.PRUNED
    assert t.user_attrs[CONSTRAINTS_ATTR] == [0.5, -1.0]
    assert tuple(t.system_attrs["constraints"]) == (0.5, -1.0)


def test_a_refused_tell_is_a_warning_not_the_end_of_the_sweep(caplog):
    s = searcher()
    s.suggest("t1")
    s._ot_study.tell(s._ot_trials["t1"], [0.5, 1.0])  # already finished in Optuna: a second tell is refused
    s.on_trial_complete("t1", result=RUNG_REPORT)
    assert s._ot_study.trials[0].state == S.COMPLETE
    assert "could not tell Optuna that trial t1 is PRUNED" in caplog.text
