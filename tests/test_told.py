"""What the sweep tells Optuna of a finished trial: live (the sweep's OptunaSearch) and on resume
(``study_with_history``) alike -- a trial successive halving stopped at a rung is PRUNED, without values."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("ray.tune.search.optuna")

from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from sweep.config import parse_config  # noqa: E402
from sweep.constraints import UNKNOWN_VIOLATION  # noqa: E402
from sweep.driver import CONSTRAINTS_KEY, RUNG, _sweep_search, _told  # noqa: E402
from sweep.results.schema import TrialRecord  # noqa: E402
from sweep.space import Told, study_with_history  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
S = optuna.trial.TrialState
OBJECTIVES = ["accuracy", "params"]


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


def searcher(sampler=None, budgets=(), lag=None):
    return _sweep_search(OptunaSearch, budgets, lag=lag)(space=_space, metric=OBJECTIVES, mode=["max", "min"],
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
@pytest.mark.parametrize("lag", [None, 1])
def test_live_states(result, error, state, values, lag):
    s = searcher(lag=lag)
    s.suggest("t1")
    s.on_trial_complete("t1", result=result, error=error)
    if lag is not None:  # held until the next draw, which must see it
        assert s._ot_study.trials[0].state == S.RUNNING
        assert s.suggest("t2") is not None
    t = s._ot_study.trials[0]
    assert t.state == state
    assert t.values == values


@pytest.mark.parametrize("result", [{**RUNG_REPORT, CONSTRAINTS_KEY: [0.5, -1.0]},
                                    {**FINAL, CONSTRAINTS_KEY: [0.5, -1.0]}])
def test_constraint_values_reach_optuna_whatever_the_state(result):
    s = searcher(budgets=("max_params", "min_quality"))
    s.suggest("t1")
    s.on_trial_complete("t1", result=result)
    assert s._ot_study.trials[0].constraints == {"max_params": 0.5, "min_quality": -1.0}


def test_a_failed_trial_gets_no_constraints_and_one_that_reported_none_breaks_every_budget():
    s = searcher(budgets=("max_params",))
    for tid in ("failed", "silent"):
        s.suggest(tid)
    s.on_trial_complete("failed", result=None, error=True)
    s.on_trial_complete("silent", result=FINAL)  # a record without constraint values: the sweep cannot place it
    failed, silent = s._ot_study.trials
    assert failed.state == S.FAIL and failed.constraints == {}
    assert silent.state == S.COMPLETE and silent.constraints == {"max_params": UNKNOWN_VIOLATION}


def test_no_budget_sets_no_constraint_and_a_second_completion_changes_nothing():
    s = searcher()
    s.suggest("t1")
    s.on_trial_complete("t1", result={**RUNG_REPORT, CONSTRAINTS_KEY: []})
    s.on_trial_complete("t1", result=FINAL)  # Ray warns and ignores it
    (t,) = s._ot_study.trials
    assert t.state == S.PRUNED and t.constraints == {}


def cfg(constraints=None):
    return parse_config({"name": "s", "model": {"name": "small_cnn"}, "dataset": "digits",
                         "search": {"objectives": OBJECTIVES, "constraints": constraints},
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


@pytest.mark.parametrize("state", ["pruned", "complete"])
def test_resume_keeps_constraint_values_as_the_live_sweep_set_them(state):
    budgets = {"max_params": 50, "min_quality": 0.5}
    told = Told("magnitude", {"ratio": 0.5}, None if state == "pruned" else [0.9, 100.0], (0.5, -1.0), state)
    storage, name = study_with_history(cfg(budgets), [told], [], optuna.samplers.RandomSampler(seed=0))
    (t,) = optuna.load_study(study_name=name, storage=storage).trials
    live = searcher(budgets=tuple(budgets))
    live.suggest("t1")
    live.on_trial_complete("t1", result={**(RUNG_REPORT if state == "pruned" else FINAL), CONSTRAINTS_KEY: [0.5, -1.0]})
    assert t.constraints == live._ot_study.trials[0].constraints == {"max_params": 0.5, "min_quality": -1.0}


def test_a_refused_tell_is_a_warning_not_the_end_of_the_sweep(caplog):
    s = searcher()
    s.suggest("t1")
    s._ot_study.tell(s._ot_trials["t1"], [0.5, 1.0])  # already finished in Optuna: a second tell is refused
    s.on_trial_complete("t1", result=RUNG_REPORT)
    assert s._ot_study.trials[0].state == S.COMPLETE
    assert "could not tell Optuna that trial t1 is PRUNED" in caplog.text


@pytest.mark.parametrize("result,state", [(RUNG_REPORT, S.PRUNED), (FINAL, S.COMPLETE)])
def test_a_result_whose_texts_the_callback_took_is_told_the_same(result, state):
    """The sweep's callback takes the record, rung row and trajectory out of the result Tune keeps as the
    trial's last; what is left still tells a final report from a rung report."""
    from sweep.driver import _PAYLOAD, _taken_payload

    kept = {**result, "history_json": "[[1]]"}
    payload = _taken_payload(kept)
    assert payload == {k: {**result, "history_json": "[[1]]"}.get(k) for k in _PAYLOAD}
    assert not any(kept.get(k) for k in _PAYLOAD) and set(kept) - set(_PAYLOAD) == set(result) - set(_PAYLOAD)
    s = searcher()
    s.suggest("t1")
    s.on_trial_complete("t1", result=kept)
    assert s._ot_study.trials[0].state == state


def test_with_a_lag_a_draw_waits_for_the_draws_it_must_see_and_sees_no_later_one():
    s = searcher(lag=2)
    assert s.suggest("a") and s.suggest("b")  # the first two draws see nothing
    s.on_trial_complete("b", result={**FINAL, "accuracy": 0.7})  # finished first: not told yet
    assert s.suggest("c") is None  # the third draw must see "a", still running: Tune asks again
    s.on_trial_complete("a", result=FINAL)
    assert s.suggest("d") is not None
    assert [t.state for t in s._ot_study.trials] == [S.COMPLETE, S.RUNNING, S.RUNNING]  # "b" waits for the next
    s.on_trial_complete("d", result=RUNG_REPORT)
    assert s.suggest("e") is not None  # sees "a" and "b", not "d"
    assert [t.state for t in s._ot_study.trials] == [S.COMPLETE, S.COMPLETE, S.RUNNING, S.RUNNING]
    assert s._ot_study.trials[1].values == [0.7, 10.0]


def _draws(finish_order: list[int], lag, n: int = 12) -> list[float]:
    """The ``x`` each of ``n`` draws of a seeded TPE got, two running at a time, where ``finish_order`` says
    which of the two running trials finishes first at each step (0: the older)."""
    s = searcher(optuna.samplers.TPESampler(seed=3, n_startup_trials=3), lag=lag)
    running, xs, asked, steps = [], [], 0, iter(finish_order)
    while len(xs) < n:
        while len(running) < 2 and asked < n:
            tid = f"t{asked}"
            cfg = s.suggest(tid)
            if cfg is None:
                break
            running.append((tid, cfg["x"]))
            xs.append(cfg["x"])
            asked += 1
        if not running:
            break
        tid, x = running.pop(min(next(steps, 0), len(running) - 1))
        s.on_trial_complete(tid, result={"accuracy": 1.0 - (x - 0.3) ** 2, "params": 10.0 * x, "record_json": ""})
    return xs


@pytest.mark.parametrize("order", [[1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0], [1] * 12, [0, 1] * 6])
def test_with_a_lag_the_draws_do_not_depend_on_which_trial_finishes_first(order):
    assert _draws(order, lag=2) == _draws([0] * 12, lag=2)
    assert _draws(order, lag=None) != _draws([0] * 12, lag=None)  # without it they do (this seed, these orders)
