"""Search-space YAML: parsing, validation and the one-line error template."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from sweep.config import OBJECTIVES, SAMPLERS, SweepConfig, load_config, parse_config
from sweep.errors import ConfigError, RegistryError
from sweep.methods import method_names

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"

# "<constraint> must be <rule>, but got <key>=<value> (<file>: <dotted.key>)"
TEMPLATE = re.compile(r"^.+ must be .+, but got \w+=.+ \((?P<file>.+): (?P<key>[\w.]+)\)$")

BASE = """\
name: t
model:
  name: small_cnn
dataset:
  name: digits
methods:
  magnitude:
    ratio: {low: 0.1, high: 0.9}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def with_methods(tmp_path: Path, methods_yaml: str) -> Path:
    head = BASE.split("methods:")[0]
    return write(tmp_path, head + "methods:\n" + textwrap.indent(textwrap.dedent(methods_yaml), "  "))


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert "\n" not in msg, f"error must be one line: {msg!r}"
    return msg


# ----------------------------------------------------------------------------- the shipped example
def test_quickstart_parses():
    cfg = load_config(QUICKSTART)
    assert isinstance(cfg, SweepConfig)
    assert cfg.name == "quickstart"
    assert cfg.model.name == "cifar_resnet20"
    assert cfg.dataset.name == "digits" and cfg.dataset.options == {}
    assert cfg.baseline.path is None
    assert (cfg.baseline.train.epochs, cfg.baseline.train.lr) == (10, 0.05)
    assert (cfg.finetune.epochs, cfg.finetune.lr) == (3, 0.01)
    assert cfg.search.objectives == ("accuracy", "latency_ms", "params")
    assert cfg.search.sampler == "tpe" and cfg.search.trials == 12 and cfg.search.concurrency == 2
    assert cfg.search.cpus_per_trial == 1.0
    assert [m.name for m in cfg.methods] == ["magnitude", "sr_init"]  # the front compares two methods
    assert cfg.method("magnitude").knobs == {"ratio": {"low": 0.1, "high": 0.9, "log": False}}
    assert cfg.method("sr_init").knobs == {"tau": {"low": 0.0, "high": 0.5, "log": False}}
    assert cfg.to_dict()["name"] == "quickstart" and "raw" not in cfg.to_dict()


def test_defaults_apply_when_sections_are_missing(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.seed == 0
    assert cfg.search.objectives == ("accuracy", "latency_ms")
    assert cfg.finetune.weight_decay == 5e-4 and cfg.finetune.optimizer == "sgd"
    assert cfg.measure.device == "cpu" and cfg.measure.repeats == 50


def test_name_override_and_bad_name(tmp_path):
    p = write(tmp_path, BASE)
    assert load_config(p, name="other-name").name == "other-name"
    with pytest.raises(ConfigError, match=r"--name"):
        load_config(p, name="bad name/with slash")


# ----------------------------------------------------------------------------- unknown keys, YAML
def test_unknown_top_level_key_names_key_and_file(tmp_path):
    p = write(tmp_path, BASE + "epochz: 3\n")
    msg = error_of(p)
    assert "'epochz'" in msg
    assert str(p) in msg
    assert "allowed keys" in msg and "finetune" in msg


def test_unknown_nested_key_names_key_file_and_section(tmp_path):
    p = write(tmp_path, BASE + "search:\n  trails: 4\n")
    msg = error_of(p)
    assert "'trails'" in msg
    assert f"{p}: search" in msg
    assert "trials" in msg  # the allowed keys are listed


def test_unknown_knob_names_the_knob_and_lists_valid_ones(tmp_path):
    msg = error_of(with_methods(tmp_path, "magnitude:\n  ratoi: 0.5\n"))
    assert "'ratoi'" in msg and "methods.magnitude" in msg
    assert "ratio" in msg and "macs_fraction" in msg


def test_malformed_yaml_gives_the_line(tmp_path):
    p = write(tmp_path, "name: t\nmodel:\n  name: small_cnn\nsearch: [unclosed\n  trials: 3\n")
    msg = error_of(p)
    assert msg.startswith(f"malformed YAML in {p}")
    m = re.search(r"at line (\d+), column \d+", msg)
    assert m, msg
    assert int(m.group(1)) in (4, 5)  # the line of the broken flow sequence (or where the parser noticed)


def test_duplicate_key_names_the_key_its_lines_and_the_file(tmp_path):
    p = write(tmp_path, BASE + "baseline:\n  epochs: 2\n  lr: 0.1\n  lr: 0.2\n")
    assert error_of(p) == f"keys must be unique in each YAML mapping, but got key 'lr' twice, at lines 11 and 12 ({p})"


def test_duplicate_top_level_key_is_rejected_too(tmp_path):
    p = write(tmp_path, BASE + "name: u\n")
    assert error_of(p) == f"keys must be unique in each YAML mapping, but got key 'name' twice, at lines 1 and 9 ({p})"


def test_duplicate_key_in_a_flow_mapping(tmp_path):
    p = write(tmp_path, BASE.replace("{low: 0.1, high: 0.9}", "{low: 0.1, low: 0.2, high: 0.9}"))
    assert error_of(p) == f"keys must be unique in each YAML mapping, but got key 'low' twice, at lines 8 and 8 ({p})"


def test_merge_keys_may_still_be_overridden(tmp_path):
    from sweep.config import read_yaml

    p = write(tmp_path, "a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n")
    assert read_yaml(p) == {"a": {"b": 1, "c": 2}, "d": {"b": 3, "c": 2}}


def test_same_key_in_different_mappings_is_fine(tmp_path):
    p = write(tmp_path, BASE + "baseline: {epochs: 2, lr: 0.1}\nfinetune: {epochs: 2, lr: 0.1}\n")
    assert load_config(p).finetune.lr == 0.1


def test_non_utf8_file_names_the_byte_offset(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_bytes(BASE.encode().replace(b"name: t", b"name: t  # caf\xe9", 1))
    assert error_of(p) == (f"search space file must be UTF-8 text, but got byte 0xe9 at byte offset 14 (line 1) "
                           f"({p}); save it as UTF-8")


def test_utf16_file_fails_at_offset_0(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_bytes(BASE.encode("utf-16"))
    assert error_of(p).startswith("search space file must be UTF-8 text, but got byte 0xff at byte offset 0 (line 1)")


def test_utf8_with_bom_and_non_ascii_comments_is_read(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + BASE.replace("name: t", "name: t  # caf\u00e9").encode())
    assert load_config(p).name == "t"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="search space file not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    msg = error_of(write(tmp_path, "- a\n- b\n"))
    assert "must be a mapping" in msg


def test_unknown_method_lists_valid_names(tmp_path):
    p = with_methods(tmp_path, "magnitud:\n  ratio: 0.5\n")
    with pytest.raises(RegistryError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "'magnitud'" in msg
    assert f"{p}: methods.magnitud" in msg
    for name in method_names():
        assert name in msg


def test_methods_required(tmp_path):
    head = BASE.split("methods:")[0]
    msg = error_of(write(tmp_path, head))
    assert "methods must be a non-empty mapping" in msg


# ----------------------------------------------------------------------------- knob values and ranges
def _assert_template(msg: str, path: Path, key: str) -> None:
    m = TEMPLATE.match(msg)
    assert m, f"message does not follow the template: {msg!r}"
    assert m.group("file") == str(path)
    assert m.group("key") == key, msg


def test_fixed_ratio_out_of_range(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  ratio: 1.5\n")
    msg = error_of(p)
    _assert_template(msg, p, "methods.magnitude.ratio")
    assert "ratio must be in (0, 1)" in msg and "ratio=1.5" in msg


@pytest.mark.parametrize("value", [0, 1, 1.0, 0.0])
def test_open_ratio_bounds_are_excluded(tmp_path, value):
    p = with_methods(tmp_path, f"magnitude:\n  ratio: {value}\n")
    _assert_template(error_of(p), p, "methods.magnitude.ratio")


def test_ratio_must_be_a_number(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  ratio: half\n")
    msg = error_of(p)
    _assert_template(msg, p, "methods.magnitude.ratio")
    assert "ratio='half'" in msg


def test_range_low_not_below_high(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  ratio: {low: 0.8, high: 0.2}\n")
    msg = error_of(p)
    _assert_template(msg, p, "methods.magnitude.ratio")
    assert "low must be < high" in msg and "low=0.8" in msg and "high=0.2" in msg
    # equal ends are an error too (a range, not a fixed value)
    p = with_methods(tmp_path, "magnitude:\n  ratio: {low: 0.5, high: 0.5}\n")
    _assert_template(error_of(p), p, "methods.magnitude.ratio")


def test_range_end_out_of_knob_range(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  ratio: {low: 0.1, high: 1.2}\n")
    msg = error_of(p)
    _assert_template(msg, p, "methods.magnitude.ratio.high")
    assert "ratio=1.2" in msg


def test_log_range_with_low_at_zero(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  ratio: {low: 0, high: 0.5, log: true}\n")
    msg = error_of(p)
    _assert_template(msg, p, "methods.magnitude.ratio.low")
    assert "ratio=0.0" in msg


def test_log_flag_must_be_bool(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  ratio: {low: 0.1, high: 0.5, log: 'yes'}\n")
    msg = error_of(p)
    assert "log must be true or false" in msg and "methods.magnitude.ratio" in msg


def test_log_range_low_not_positive_is_rejected():
    """The log-range rule itself, on a knob whose own range admits 0 (no built-in knob does)."""
    from sweep.methods import Knob, MethodSpec

    spec = MethodSpec(name="toy", prune=lambda *a: None, knobs=(Knob("lr", "float", 0.1, low=None, high=10.0),))
    with pytest.raises(ConfigError) as ei:
        spec.parse_space({"lr": {"low": 0.0, "high": 1.0, "log": True}}, "x.yaml: methods.toy")
    assert "low=0.0" in str(ei.value) and "(x.yaml: methods.toy.lr)" in str(ei.value)


def test_log_range_message_follows_template():
    from sweep.methods import Knob, MethodSpec

    spec = MethodSpec(name="toy", prune=lambda *a: None, knobs=(Knob("lr", "float", 0.1, low=None, high=10.0),))
    with pytest.raises(ConfigError) as ei:
        spec.parse_space({"lr": {"low": 0.0, "high": 1.0, "log": True}}, "x.yaml: methods.toy")
    assert TEMPLATE.match(str(ei.value)), str(ei.value)


def test_choices_with_bad_value(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  importance: {choices: [l2, l7]}\n")
    msg = error_of(p)
    _assert_template(msg, p, "methods.magnitude.importance")
    assert "importance='l7'" in msg and "l2" in msg and "bn_scale" in msg


def test_choices_with_out_of_range_number(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  ratio: {choices: [0.3, 1.5]}\n")
    msg = error_of(p)
    _assert_template(msg, p, "methods.magnitude.ratio")
    assert "ratio=1.5" in msg


def test_choices_entry_rejects_other_keys_and_empty_list(tmp_path):
    assert "takes no other keys" in error_of(
        with_methods(tmp_path, "magnitude:\n  importance: {choices: [l2], log: true}\n"))
    assert "non-empty list" in error_of(with_methods(tmp_path, "magnitude:\n  importance: {choices: []}\n"))


def test_range_on_a_categorical_knob(tmp_path):
    msg = error_of(with_methods(tmp_path, "magnitude:\n  importance: {low: 1, high: 2}\n"))
    assert "use choices" in msg


def test_integer_knob_rejects_fractions_and_bad_step(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  round_to: 2.5\n")
    msg = error_of(p)
    _assert_template(msg, p, "methods.magnitude.round_to")
    assert "integer" in msg
    msg = error_of(with_methods(tmp_path, "magnitude:\n  round_to: {low: 1, high: 8, step: 1.5}\n"))
    assert "step" in msg and "integer" in msg
    msg = error_of(with_methods(tmp_path, "magnitude:\n  ratio: {low: 0.1, high: 0.8, step: 0.1, log: true}\n"))
    assert "step and log cannot be combined" in msg


@pytest.mark.parametrize("rng, needles", [
    ("{low: 0.1, high: 0.5, step: 0.15}", ["step must be a divisor of high - low (a range holds both ends), but "
                                          "got step=0.15 for low=0.1, high=0.5: 2.67 steps", "try high 0.4 or a step"]),
    ("{low: 0.1, high: 0.5, step: 0.7}", ["step=0.7", "0.571 steps", "try a step that divides 0.4"]),
])
def test_a_step_that_does_not_divide_the_range_is_refused(tmp_path, rng, needles):
    """Optuna would move high down to the last whole step, or make the range one value, without a word."""
    p = with_methods(tmp_path, f"magnitude:\n  ratio: {rng}\n")
    msg = error_of(p)
    _assert_template(msg, p, "methods.magnitude.ratio")
    for n in needles:
        assert n in msg, (n, msg)


def test_valid_space_forms(tmp_path):
    cfg = load_config(with_methods(tmp_path, """\
        magnitude:
          ratio: {low: 0.1, high: 0.8, step: 0.1}
          importance: {choices: [l1, l2]}
          global_pruning: false
          round_to: {low: 1, high: 8, log: true}
        """))
    knobs = cfg.method("magnitude").knobs
    assert knobs["ratio"] == {"low": 0.1, "high": 0.8, "log": False, "step": 0.1}
    assert knobs["importance"] == {"choices": ["l1", "l2"]}
    assert knobs["global_pruning"] == {"fixed": False}
    assert knobs["round_to"] == {"low": 1, "high": 8, "log": True}
    assert isinstance(knobs["round_to"]["low"], int)


def test_ratio_and_macs_fraction_both_set(tmp_path):
    p = with_methods(tmp_path, "magnitude:\n  ratio: 0.5\n  macs_fraction: {low: 0.2, high: 0.8}\n")
    msg = error_of(p)
    assert "give only one of ratio, macs_fraction" in msg
    assert f"({p}: methods.magnitude)" in msg


def test_macs_fraction_alone_is_fine(tmp_path):
    cfg = load_config(with_methods(tmp_path, "magnitude:\n  macs_fraction: {low: 0.2, high: 0.8}\n"))
    assert set(cfg.method("magnitude").knobs) == {"macs_fraction"}


# ----------------------------------------------------------------------------- objectives, sampler
@pytest.mark.parametrize("objectives, needle", [
    ("[latency_ms, params]", "must hold accuracy"),
    ("[accuracy]", "must hold accuracy"),
    ("[accuracy, speed]", "'speed'"),
    ("[accuracy, latency_ms, latency_ms]", "each once"),
    ("[]", "non-empty list"),
    ("accuracy", "non-empty list"),
])
def test_objectives_validation(tmp_path, objectives, needle):
    p = write(tmp_path, BASE + f"search:\n  objectives: {objectives}\n")
    msg = error_of(p)
    assert needle in msg
    assert f"({p}: search.objectives)" in msg


def test_unknown_objective_lists_the_valid_ones(tmp_path):
    msg = error_of(write(tmp_path, BASE + "search:\n  objectives: [accuracy, speed]\n"))
    for o in OBJECTIVES:
        assert o in msg


@pytest.mark.parametrize("objectives", [["accuracy", "latency_ms"], ["accuracy", "params", "macs"],
                                        ["macs", "accuracy"]])
def test_valid_objectives(tmp_path, objectives):
    cfg = load_config(write(tmp_path, BASE + f"search:\n  objectives: [{', '.join(objectives)}]\n"))
    assert cfg.search.objectives == tuple(objectives)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_is_accepted(tmp_path, sampler):
    assert load_config(write(tmp_path, BASE + f"search:\n  sampler: {sampler}\n")).search.sampler == sampler


def test_unknown_sampler(tmp_path):
    p = write(tmp_path, BASE + "search:\n  sampler: cmaes\n")
    msg = error_of(p)
    _assert_template(msg, p, "search.sampler")
    for s in SAMPLERS:
        assert s in msg


@pytest.mark.parametrize("section, key, value", [
    ("search", "trials", 0),
    ("search", "concurrency", -1),
    ("search", "cpus_per_trial", 0),
    ("search", "epoch_budget", 0),
    ("search", "epoch_budget", 2.5),
    ("search", "epoch_budget", "true"),
    ("search", "reproducible", 1),
    ("finetune", "lr", 0),
    ("finetune", "epochs", -1),
    ("train", "momentum", 1.5),
    ("measure", "repeats", 2),
])
def test_numeric_section_values_follow_template(tmp_path, section, key, value):
    p = write(tmp_path, BASE + f"{section}:\n  {key}: {value}\n")
    msg = error_of(p)
    _assert_template(msg, p, f"{section}.{key}")
    assert f"{key}=" in msg


@pytest.mark.parametrize("text,expected", [("", False), ("search:\n  reproducible: true\n", True)])
def test_reproducible_draws_are_asked_for(tmp_path, text, expected):
    assert load_config(write(tmp_path, BASE + text)).search.reproducible is expected


def test_epoch_budget_needs_fine_tune_epochs_to_count(tmp_path):
    assert load_config(write(tmp_path, BASE + "search:\n  epoch_budget: 30\n")).search.epoch_budget == 30
    assert load_config(write(tmp_path, BASE)).search.epoch_budget is None
    p = write(tmp_path, BASE + "search:\n  epoch_budget: 30\nfinetune:\n  epochs: 0\n")
    msg = error_of(p)
    _assert_template(msg, p, "search.epoch_budget")
    assert "epoch_budget=30 with finetune.epochs=0" in msg


def test_promotion_needs_the_fine_tune_state_kept(tmp_path):
    sched = "search:\n  scheduler: {type: mo_asha, promote: true}\n"
    assert load_config(write(tmp_path, BASE + sched)).search.scheduler.promote
    p = write(tmp_path, BASE + sched + "finetune:\n  checkpoint: false\n")
    msg = error_of(p)
    _assert_template(msg, p, "search.scheduler.promote")
    assert "promote=true with finetune.checkpoint=false" in msg


def test_measure_device_checked(tmp_path):
    msg = error_of(write(tmp_path, BASE + "measure:\n  device: tpu\n"))
    assert "device='tpu'" in msg and "measure.device" in msg
    cfg = load_config(write(tmp_path, BASE + "measure:\n  device: cuda:1\n"))
    assert cfg.measure.device == "cuda:1"


# ----------------------------------------------------------------------------- baseline, dataset, train
def test_baseline_path_that_does_not_exist(tmp_path):
    p = write(tmp_path, BASE + "baseline:\n  path: missing/dense.pt\n")
    msg = error_of(p)
    assert "baseline checkpoint not found" in msg
    assert "'missing/dense.pt'" in msg and f"({p}: baseline.path)" in msg


def test_baseline_path_relative_to_the_yaml(tmp_path):
    (tmp_path / "dense.pt").write_bytes(b"x")
    cfg = load_config(write(tmp_path, BASE + "baseline: dense.pt\n"))  # string shorthand
    assert cfg.baseline.path == str((tmp_path / "dense.pt").resolve())


def test_string_dataset_shorthand(tmp_path):
    text = BASE.replace("dataset:\n  name: digits\n", "dataset: digits\n")
    assert "dataset: digits" in text
    cfg = load_config(write(tmp_path, text))
    assert cfg.dataset.name == "digits" and cfg.dataset.options == {}


def test_dataset_options_are_kept(tmp_path):
    text = BASE.replace("  name: digits\n", "  name: synthetic\n  num_classes: 3\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.dataset.name == "synthetic" and cfg.dataset.options == {"num_classes": 3}


def test_dataset_without_name(tmp_path):
    text = BASE.replace("  name: digits\n", "  val_fraction: 0.2\n")
    msg = error_of(write(tmp_path, text))
    assert "dataset must be a mapping with a name" in msg


def test_weight_decay_as_yaml_string(tmp_path):
    p = write(tmp_path, BASE + "train:\n  weight_decay: 5e-4\n")
    import yaml

    assert isinstance(yaml.safe_load(p.read_text())["train"]["weight_decay"], str)  # the YAML 1.1 quirk
    cfg = load_config(p)
    assert cfg.finetune.weight_decay == pytest.approx(5e-4)
    assert cfg.baseline.train.weight_decay == pytest.approx(5e-4)
    assert isinstance(cfg.finetune.weight_decay, float)


def test_weight_decay_non_numeric_string(tmp_path):
    p = write(tmp_path, BASE + "train:\n  weight_decay: lots\n")
    _assert_template(error_of(p), p, "train.weight_decay")


def test_parse_config_from_a_dict():
    cfg = parse_config({"model": {"name": "small_cnn"}, "dataset": "digits",
                        "methods": {"magnitude": {"ratio": 0.3}}}, source="inline.yaml")
    assert cfg.name == "inline"
    assert cfg.method("magnitude").knobs == {"ratio": {"fixed": 0.3}}
    with pytest.raises(ConfigError, match="not in this sweep's space"):
        cfg.method("taylor")


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_integer_knob_non_finite_is_a_config_error(tmp_path, value):
    p = with_methods(tmp_path, f"magnitude:\n  round_to: {value}\n")
    _assert_template(error_of(p), p, "methods.magnitude.round_to")


@pytest.mark.parametrize("space", sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml")))
def test_every_shipped_space_loads_and_is_documented(space, tmp_path, monkeypatch):
    """A shipped space a user copies must parse as it is (registered methods, valid knobs and budgets), be
    named after its file, and have its row in the README's table.  Run where a user would have made the
    demo array ``unlabeled_digits.yaml``'s header describes."""
    import numpy as np
    from sklearn.datasets import load_digits

    monkeypatch.chdir(tmp_path)
    np.save("device_digits.npy", (load_digits().images * 255 / 16).round().astype("uint8"))
    cfg = load_config(ROOT / "search_spaces" / space)
    assert cfg.name == Path(space).stem
    assert cfg.methods and {m.name for m in cfg.methods} <= set(method_names())
    assert f"| `{space}` |" in (ROOT / "README.md").read_text(encoding="utf-8")  # its row in the spaces table


def test_a_distillation_temperature_in_a_supervised_space_is_refused(tmp_path):
    """finetune.temperature is read by label-free fine-tuning alone: a supervised space that sets it would
    believe it had an effect."""
    p = with_methods(tmp_path, "magnitude:\n  ratio: 0.5\n")
    p.write_text(p.read_text() + "finetune:\n  temperature: 2.0\n")
    msg = error_of(p)
    _assert_template(msg, p, "finetune.temperature")
    assert "with labels=supervised" in msg


@pytest.mark.parametrize("given", ["device_digits.npy", "data/device_digits.npy"])
def test_a_missing_unlabeled_file_names_both_places_it_was_looked_for(tmp_path, monkeypatch, given):
    """A relative ``dataset.unlabeled`` is looked for from the working directory, then next to the space: a
    missing one says both paths, so the user sees where to put it."""
    monkeypatch.chdir(tmp_path)
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    src = (ROOT / "search_spaces" / "unlabeled_digits.yaml").read_text(encoding="utf-8")
    p = spaces / "unlabeled_digits.yaml"
    p.write_text(src.replace("unlabeled: device_digits.npy", f"unlabeled: {given}"), encoding="utf-8")
    msg = error_of(p)
    assert msg == (f"unlabeled must be an existing folder of images or a .npy file, but got unlabeled={given!r}, "
                   f"which is neither {tmp_path / given} nor {spaces / given} ({p}: dataset.unlabeled)")
