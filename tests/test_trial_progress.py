"""A trial cut short mid-fine-tune goes on from its last saved epoch when its configuration runs again."""

from __future__ import annotations

import json

import pytest

from sweep.config import parse_config
from sweep.folder import SweepFolder
from sweep.trial import TrialSpec, prepare_baseline, progress_name, run_trial

SPACE = {
    "name": "tp",
    "model": {"name": "small_cnn"},
    "dataset": {"name": "synthetic", "num_classes": 3, "input_shape": [1, 8, 8], "n_train": 96,
                "n_val": 48, "n_test": 48},
    "baseline": {"epochs": 2, "lr": 0.05},
    "finetune": {"epochs": 3, "lr": 0.01, "checkpoint_every_s": 0},  # after every epoch
    "search": {"trials": 2, "objectives": ["accuracy", "params"]},
    "measure": {"repeats": 3, "warmup": 1},
    "methods": {"magnitude": {"ratio": {"low": 0.2, "high": 0.6}}},
}
KNOBS = {"ratio": 0.5}


def _folder(cfg, path) -> SweepFolder:
    folder = SweepFolder(path)
    folder.create(cfg)
    prepare_baseline(cfg, folder, log=lambda m: None)
    return folder


def _killed_after_epoch(cfg, folder, monkeypatch, epoch: int, seed: int) -> None:
    """Run the trial until its fine-tune state after ``epoch`` is saved, then end the process's work there."""
    from sweep.train import EpochCheckpoint

    real_save = EpochCheckpoint.save

    def save_then_die(self, state):
        real_save(self, state)
        if state["epoch"] == epoch:
            raise KeyboardInterrupt  # what the trial sees of its worker's end, as far as this test can tell

    monkeypatch.setattr(EpochCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, TrialSpec(str(folder.path), "first", "magnitude", KNOBS, seed=seed), trial_number=3)
    monkeypatch.setattr(EpochCheckpoint, "save", real_save)


def test_a_trial_cut_short_goes_on_from_its_last_epoch_when_it_runs_again(tmp_path, monkeypatch, epochs_trained):
    """Cut after epoch 2 of 3, run again under another trial id with its number and seed: it trains the last
    epoch only and ends with the network an uninterrupted run ends with; its saved state (with its
    configuration, for a resumed driver) is gone once it has its row, and `sweep status` counted it while it
    was there.  Under another seed the state is not its own: it starts over."""
    import torch

    from sweep.status import status_lines
    from sweep.trial import saved_trials

    cfg = parse_config(SPACE, source="tp.yaml")
    whole = _folder(cfg, tmp_path / "whole")
    uncut = run_trial(cfg, TrialSpec(str(whole.path), "uncut", "magnitude", KNOBS, seed=7), trial_number=3)
    assert uncut.status == "ok", uncut.error

    folder = _folder(cfg, tmp_path / "cut")
    _killed_after_epoch(cfg, folder, monkeypatch, epoch=2, seed=7)
    name = progress_name(cfg, "magnitude", KNOBS, 7, folder.baseline())
    assert saved_trials(folder) == [(name, 3, "magnitude", KNOBS)]
    assert "fine-tune states saved: 1 (a trial cut short goes on from its latest epoch when it runs again)" in \
        status_lines(folder.path)

    epochs = epochs_trained
    epochs.clear()  # the trainings above are not these
    other = run_trial(cfg, TrialSpec(str(folder.path), "other", "magnitude", KNOBS, seed=8), trial_number=4)
    assert other.status == "ok" and epochs == [0, 1, 2] and "resumed_at_epoch" not in json.loads(other.info)
    assert folder.progress_names() == [name]  # not its state: left for the trial it belongs to

    epochs.clear()
    logged = []
    again = run_trial(cfg, TrialSpec(str(folder.path), "again", "magnitude", KNOBS, seed=7), trial_number=3,
                      log_metric=lambda k, v, step=0: logged.append((k, step)))
    assert again.status == "ok", again.error
    assert [step for k, step in logged if k == "train_loss"] == [0, 1, 2]  # the saved epochs' losses, then its own
    assert epochs == [2]  # the third epoch alone
    assert again.finetune_epochs == 3 and json.loads(again.info)["resumed_at_epoch"] == 2
    a = folder.load_model(again.model_path).state_dict()
    b = whole.load_model(uncut.model_path).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert again.accuracy == uncut.accuracy
    assert folder.progress_names() == [] and not folder.progress_dir.exists()


@pytest.mark.parametrize("change, saved", [
    ({}, True),
    ({"finetune": {"epochs": 3, "lr": 0.01}}, False),  # every 10 s by default: these epochs take milliseconds
    ({"finetune": {"epochs": 3, "lr": 0.01, "checkpoint": False, "checkpoint_every_s": 0}}, False),
    ({"finetune": {"epochs": 0, "lr": 0.01, "checkpoint_every_s": 0}}, False),
], ids=["every-epoch", "default-interval", "checkpoint-off", "no-finetune"])
def test_progress_is_kept_only_where_a_fine_tune_can_be_cut_short(tmp_path, monkeypatch, change, saved):
    from sweep.train import EpochCheckpoint

    cfg = parse_config({**SPACE, **change}, source="tp.yaml")
    folder = _folder(cfg, tmp_path)
    writes = []
    real_save = EpochCheckpoint.save
    monkeypatch.setattr(EpochCheckpoint, "save", lambda self, state: (writes.append(state["epoch"]),
                                                                       real_save(self, state)))
    row = run_trial(cfg, TrialSpec(str(folder.path), "t", "magnitude", KNOBS, seed=1))
    assert row.status == "ok", row.error
    assert writes == ([1, 2, 3] if saved else [])
    assert folder.progress_names() == []  # the trial has its row: nothing left


def test_a_saved_state_of_other_shapes_or_settings_is_not_gone_on_from(tmp_path, monkeypatch):
    """The name holds the settings (another fine-tune lr: another name); a state whose network has other shapes
    (a pruning that chose otherwise this time) is dropped and training starts over, never half-loaded."""
    import torch

    from sweep.train import EpochCheckpoint, train

    cfg = parse_config(SPACE, source="tp.yaml")
    folder = _folder(cfg, tmp_path)
    other = parse_config({**SPACE, "finetune": {"epochs": 3, "lr": 0.02}}, source="tp.yaml")
    less_often = parse_config({**SPACE, "finetune": {"epochs": 3, "lr": 0.01, "checkpoint_every_s": 60}},
                              source="tp.yaml")
    base = folder.baseline()
    name = progress_name(cfg, "magnitude", KNOBS, 1, base)
    assert name == progress_name(cfg, "magnitude", dict(KNOBS), 1, dict(base))
    assert name == progress_name(less_often, "magnitude", KNOBS, 1, base)  # how often is no setting of the training
    assert name != progress_name(other, "magnitude", KNOBS, 1, base)
    assert name != progress_name(cfg, "magnitude", {"ratio": 0.4}, 1, base)
    assert name != progress_name(cfg, "magnitude", KNOBS, 2, base)

    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    data = [(x, y)]
    ck = EpochCheckpoint(tmp_path / "c.pt", key="k")
    train(torch.nn.Linear(4, 2), data, epochs=2, lr=0.05, checkpoint=ck)
    wider = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    epochs = []
    ck2 = EpochCheckpoint(tmp_path / "c.pt", key="k")
    train(wider, data, epochs=3, lr=0.0, on_epoch=lambda e, loss: epochs.append(e), checkpoint=ck2)
    assert epochs == [0, 1, 2] and "holds a network of other shapes" in ck2.why
    assert all(torch.equal(wider.state_dict()[k], before[k]) for k in before)  # lr 0: nothing loaded into it


def test_the_inbox_keeps_progress_in_the_folder_it_was_given(tmp_path):
    """The model inbox (the driver's agent for trials on other nodes) writes a state durably where the folder's
    own slot reads it, refuses a name that is not a digest, and removes the folder with the last state."""
    from sweep.errors import SweepDirError
    from sweep.inbox import ModelInbox

    folder = SweepFolder(tmp_path)
    inbox = ModelInbox(str(folder.progress_dir))
    assert inbox.progress("ab12") is None
    inbox.keep_progress("ab12", b"state")
    assert folder.progress_slot("ab12").read() == b"state" and folder.progress_names() == ["ab12"]
    with pytest.raises(SweepDirError, match=r"a progress name must be letters and digits, but got '\.\./x'"):
        inbox.keep_progress("../x", b"")
    inbox.drop_progress("ab12")
    assert not folder.progress_dir.exists()
    with pytest.raises(RuntimeError, match="keeps no progress"):
        ModelInbox().progress("ab12")


def test_a_resumed_sweep_runs_again_the_trials_a_killed_driver_left_mid_fine_tune(tmp_path):
    """A driver SIGKILLed mid-fine-tune leaves saved states and no rows: `sweep resume` runs those trials again
    first, with their numbers (so their seeds) back, beside the `stopped` ones, never one whose number or
    configuration has a finished row; once Tune is done, the states of trials with rows go and the others stay."""
    from types import SimpleNamespace

    from sweep.driver import _drop_spent_progress, _run_again
    from sweep.results.schema import TrialRecord
    from sweep.train import EpochCheckpoint

    cfg = parse_config(SPACE, source="tp.yaml")
    folder = SweepFolder(tmp_path)

    def row(number, status, ratio):
        costs = {"params": 10, "macs": 100, "latency_ms": 0.1} if status == "ok" else {}
        return TrialRecord(sweep="tp", trial_id=f"t{number}-{status}", trial_number=number, status=status,
                           method="magnitude", knobs={"ratio": ratio}, seed=number, **costs)

    def saved(number, ratio):
        name = f"s{number}x{int(ratio * 100)}"
        EpochCheckpoint(folder.progress_slot(name), name, extra={
            "method": "magnitude", "knobs": json.dumps({"ratio": ratio}), "number": number}).save({"epoch": 1})
        return name

    finished = [row(0, "ok", 0.1), row(2, "stopped_early", 0.3)]
    trials = finished + [row(3, "stopped", 0.4), row(6, "stopped", 1.0)]
    orphan = saved(1, 0.2)  # killed mid-fine-tune: no row
    spent = saved(2, 0.3)  # its number has a finished row (written before the state could go)
    same = saved(5, 0.1)  # its configuration has a finished row
    cut = saved(3, 0.4)  # a stopped row's own state: run again once, not twice
    whole = saved(6, 1)  # the trial ran with an int knob; its row came back from the table as a float
    again = _run_again(cfg, folder, trials, finished)
    assert again == [(1, "magnitude", {"ratio": 0.2}), (3, "magnitude", {"ratio": 0.4}), (6, "magnitude", {"ratio": 1})]
    assert type(again[-1][2]["ratio"]) is int  # as it ran: the name of its state holds its knobs
    off = parse_config({**SPACE, "finetune": {"epochs": 3, "lr": 0.01, "checkpoint": False}}, source="tp.yaml")
    assert _run_again(off, folder, trials, finished) == [(3, "magnitude", {"ratio": 0.4}),
                                                         (6, "magnitude", {"ratio": 1.0})]
    (folder.progress_dir / "half.pt.tmp").write_bytes(b"")  # a write an inbox never finished

    st = SimpleNamespace(folder=folder, records={r.trial_id: r for r in trials}, progress=None)
    _drop_spent_progress(st)
    assert folder.progress_names() == sorted([orphan, cut, whole]) and spent not in folder.progress_names()
    assert same not in folder.progress_names() and not (folder.progress_dir / "half.pt.tmp").exists()


def test_a_state_that_cannot_be_saved_costs_the_trial_nothing(tmp_path, monkeypatch):
    """A full disk (or an inbox gone with its node) while saving: the training goes on without its state."""
    import sweep.durable

    cfg = parse_config(SPACE, source="tp.yaml")
    folder = _folder(cfg, tmp_path)

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep.durable.FileSlot, "write", full)
    row = run_trial(cfg, TrialSpec(str(folder.path), "t", "magnitude", KNOBS, seed=1))
    assert row.status == "ok" and row.finetune_epochs == 3, row.error
    assert folder.progress_names() == []


def test_a_trial_stopped_at_a_rung_is_promoted_from_the_state_saved_there(tmp_path, epochs_trained):
    """With ``search.scheduler.promote`` the state is saved at every rung before the report (the default
    interval would not save these quick epochs): a trial whose report at rung 1 ends it (the scheduler's stop)
    goes on from epoch 1 when promoted, trains the rest only, reports no rung it passed, and ends with the
    network an uninterrupted run of it ends with."""
    import torch

    space = {**SPACE, "finetune": {"epochs": 4, "lr": 0.01},
             "search": {**SPACE["search"], "scheduler": {"type": "mo_asha", "reduction_factor": 3,
                                                         "promote": True}}}
    cfg = parse_config(space, source="tp.yaml")
    whole = _folder(cfg, tmp_path / "whole")
    uncut = run_trial(cfg, TrialSpec(str(whole.path), "uncut", "magnitude", KNOBS, seed=7), trial_number=3,
                      report_rung=lambda epochs, row: None)
    assert uncut.status == "ok", uncut.error
    assert list(json.loads(uncut.rung_quality)) == ["1", "3"]  # the rungs below its 4 epochs

    class Stopped(BaseException):  # not an error of the trial: it is not caught as one
        pass

    def stop_at_rung_1(epochs, row):
        if epochs == 1:
            assert json.loads(row.rung_quality) == {"1": row.accuracy}  # the row it would stop with
            raise Stopped  # what the trial sees of the scheduler's stop (its worker ends the training there)

    folder = _folder(cfg, tmp_path / "stopped")
    with pytest.raises(Stopped):
        run_trial(cfg, TrialSpec(str(folder.path), "first", "magnitude", KNOBS, seed=7), trial_number=3,
                  report_rung=stop_at_rung_1)
    name = progress_name(cfg, "magnitude", KNOBS, 7, folder.baseline())
    assert folder.progress_names() == [name]

    epochs_trained.clear()
    rungs = []
    again = run_trial(cfg, TrialSpec(str(folder.path), "promoted", "magnitude", KNOBS, seed=7), trial_number=3,
                      report_rung=lambda epochs, row: rungs.append(epochs))
    assert again.status == "ok", again.error
    assert epochs_trained == [1, 2, 3] and rungs == [3]  # rung 1 passed already; judged at rung 3 only
    assert json.loads(again.info)["resumed_at_epoch"] == 1
    # its row holds both rungs as the uninterrupted run's does: rung 1 measured again on the state saved there
    # (saved before rung 1's report), rung 3 reported by this run
    assert json.loads(again.rung_quality) == json.loads(uncut.rung_quality)
    a = folder.load_model(again.model_path).state_dict()
    b = whole.load_model(uncut.model_path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and again.accuracy == uncut.accuracy
    assert folder.progress_names() == []


@pytest.mark.parametrize("cut_after", [1, 2, 3])
def test_a_trial_cut_short_under_successive_halving_keeps_the_rungs_it_passed(tmp_path, monkeypatch, cut_after):
    """Rungs at 1 and 3 of 4 epochs, the state saved after every epoch: cut after any epoch and run again, the
    trial reports only the rungs still ahead, yet its row holds every rung with the quality an uninterrupted
    run has there (the passed ones from its saved state)."""
    space = {**SPACE, "finetune": {**SPACE["finetune"], "epochs": 4},
             "search": {**SPACE["search"], "scheduler": {"type": "mo_asha", "reduction_factor": 3}}}
    cfg = parse_config(space, source="tp.yaml")
    whole = _folder(cfg, tmp_path / "whole")
    uncut = run_trial(cfg, TrialSpec(str(whole.path), "uncut", "magnitude", KNOBS, seed=7), trial_number=3)
    assert uncut.status == "ok" and list(json.loads(uncut.rung_quality)) == ["1", "3"], uncut.error

    folder = _folder(cfg, tmp_path / "cut")
    _killed_after_epoch(cfg, folder, monkeypatch, epoch=cut_after, seed=7)
    rungs = []
    again = run_trial(cfg, TrialSpec(str(folder.path), "again", "magnitude", KNOBS, seed=7), trial_number=3,
                      report_rung=lambda epochs, row: rungs.append(epochs))
    assert again.status == "ok" and json.loads(again.info)["resumed_at_epoch"] == cut_after, again.error
    assert rungs == [r for r in (1, 3) if r > cut_after]
    assert json.loads(again.rung_quality) == json.loads(uncut.rung_quality)


def test_a_trial_run_by_the_driver_leaves_its_state_until_its_row_is_durable(tmp_path):
    """``keep_progress``: the trial does not remove its state when it ends (the driver's recorder does once the
    row is durable; a driver killed before that still has the trial's epochs to go on from)."""
    cfg = parse_config(SPACE, source="tp.yaml")
    folder = _folder(cfg, tmp_path)
    row = run_trial(cfg, TrialSpec(str(folder.path), "t", "magnitude", KNOBS, seed=1), trial_number=0,
                    keep_progress=True)
    assert row.status == "ok", row.error
    assert folder.progress_names() == [progress_name(cfg, "magnitude", KNOBS, 1, folder.baseline())]
