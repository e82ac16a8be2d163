"""The method contract.

A pruning method is one module with one entry point::

    @register_method("magnitude", knobs=[Knob(...), ...], summary="...")
    def prune(model, example_inputs, cfg: MethodConfig, ctx: PruneContext) -> PruneResult: ...

``cfg`` is the method's frozen, validated knob values; ``ctx`` carries data loaders, device, seed and
callables for methods that train while pruning.  Methods never import Ray, Optuna or MLflow, and
import heavy libraries (torch, torch_pruning) inside the function so that ``sweep methods`` is fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import ConfigError
from ..registry import Registry

# ints: a list of non-negative integers (fixed only); stages: one float per depth stage, each in the knob's
# range, which a space searches as a family of float knobs <member>_0, <member>_1, ... (see Knob.member)
KINDS = ("float", "int", "categorical", "bool", "ints", "stages")


@dataclass(frozen=True)
class Knob:
    """One hyperparameter of a method, with its allowed range (what a space may search over)."""

    name: str
    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    help: str = ""
    optional: bool = False  # None is a valid value (e.g. "not set")
    flag: bool = False  # also an option of `sweep prune`: --<name> (a pruning target, e.g. ratio, tau)
    # kind "stages": the name of one stage's knob without its index (stage_ratio -> stage_ratio_0, ...).
    # A space samples each stage under its own name, so every stage is one scalar column of the results
    # and one axis of the sampler, as any float knob; the method receives them as one tuple.
    member: str | None = None

    def range_text(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices or ())) + "}"
        if self.kind == "bool":
            return "{true, false}"
        if self.kind == "ints":
            return "[i, j, ...]"
        if self.kind == "stages":
            return f"{self.scalar().range_text()} each"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else _fmt(self.low)
        high = "inf" if self.high is None else _fmt(self.high)
        return f"{lo}{low}, {high}{hi}"

    def validate(self, value: Any, where: str) -> Any:
        """Return the value coerced to the knob's kind, or raise a one-line ConfigError."""
        n = self.name
        if value is None and self.optional:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{n} must be true or false, but got {n}={value!r} ({where})")
            return value
        if self.kind == "ints":
            return self._ints(value, where)
        if self.kind == "stages":
            return self._stages(value, where)
        if self.kind == "categorical":
            if value not in (self.choices or ()):
                raise ConfigError(f"{n} must be one of {self.range_text()}, but got {n}={value!r} ({where})")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{n} must be a number in {self.range_text()}, but got {n}={value!r} ({where})")
        if self.kind == "int":
            if not math.isfinite(value) or float(value) != int(value):
                raise ConfigError(f"{n} must be an integer in {self.range_text()}, but got {n}={value!r} ({where})")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{n} must be finite, but got {n}={value!r} ({where})")
        bad = (
            (self.low is not None and (value < self.low or (self.low_open and value == self.low)))
            or (self.high is not None and (value > self.high or (self.high_open and value == self.high)))
        )
        if bad:
            raise ConfigError(f"{n} must be in {self.range_text()}, but got {n}={value!r} ({where})")
        return value


    def _ints(self, value: Any, where: str) -> tuple:
        """A list of non-negative integers, given as a list or as ``"1,8,17"`` (a command-line value)."""
        n = self.name
        items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else value
        try:
            out = tuple(int(str(v).strip()) for v in items if str(v).strip())
        except (TypeError, ValueError):
            out = None
        if (out is None or not out or any(v < 0 for v in out) or isinstance(value, bool)
                or (not isinstance(value, str) and any(isinstance(v, (bool, float)) for v in items))):
            raise ConfigError(f"{n} must be a non-empty list of non-negative integers (e.g. 1,8,17), but got "
                              f"{n}={value!r} ({where})")
        return out


    def scalar(self) -> "Knob":
        """A ``stages`` knob's range as one float knob (under the family's name)."""
        return replace(self, kind="float", default=None, optional=False, member=None)

    def member_knob(self, i: int) -> "Knob":
        """The float knob of stage ``i`` of a ``stages`` knob (``<member>_<i>``)."""
        return replace(self.scalar(), name=f"{self.member}_{i}", help=f"{self.help} (stage {i})")

    def member_index(self, name: str) -> int | None:
        """``i`` when ``name`` is ``<member>_<i>`` of this ``stages`` knob, else None."""
        if self.kind != "stages" or not name.startswith(f"{self.member}_"):
            return None
        digits = name[len(self.member) + 1:]
        # one spelling per stage: stage_ratio_01 is not stage_ratio_1
        return int(digits) if digits.isdigit() and digits.isascii() and str(int(digits)) == digits else None

    def _stages(self, value: Any, where: str) -> tuple:
        """One float per stage, given as a list or as ``"0.2,0.5,0.3"`` (a command-line value)."""
        n = self.name
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError(f"{n} must be a non-empty list of numbers in {self.scalar().range_text()} (one per "
                              f"stage), but got {n}={value!r} ({where})")
        out = []
        for i, v in enumerate(items):
            if isinstance(value, str):
                try:
                    v = float(v)
                except ValueError:
                    v = v.strip()  # not a number: the stage's knob says so, naming it
            out.append(self.member_knob(i).validate(v, where))
        return tuple(out)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


class MethodConfig(Mapping):
    """Frozen knob values of one method; attribute and mapping access."""

    def __init__(self, method: str, values: Mapping[str, Any]):
        object.__setattr__(self, "_method", method)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        raise AttributeError("MethodConfig is frozen")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"MethodConfig({self._method}, {self._values})"


@dataclass
class PruneContext:
    """What a method may use besides the model: data, device, seed and training callables.

    Built by :func:`sweep.methods.context.build_context` (for ``sweep run`` and ``sweep prune`` alike).
    Conventions:

    * ``labels_available`` is THE one switch saying whether training labels exist; a method reads it,
      never the length of a batch.  With labels, ``train_loader`` / ``val_loader`` yield ``(x, y)``;
      without, they yield ``(x,)`` only.
    * ``unlabeled_loader`` / ``unlabeled_val_loader`` (training / validation inputs, items ``(x,)``)
      always exist, labels or not: what a label-free method reads, with no fallback.
    * ``ignored_layers`` is the final list of layers no method prunes; methods use it as given.
    * ``finetune(model, epochs)`` trains with the sweep's fine-tune settings (cross-entropy, or
      distillation from ``teacher`` without labels) and returns the per-epoch losses;
      ``evaluate(model)`` returns the validation quality (top-1 accuracy, or agreement with the teacher
      without labels); ``log_metric(key, value, step)`` records a trajectory in the trial's run.
    """

    train_loader: Iterable
    val_loader: Iterable
    unlabeled_loader: Iterable  # training inputs, items (x,): no labels reachable
    unlabeled_val_loader: Iterable  # validation inputs, items (x,)
    labels_available: bool
    device: str
    seed: int
    num_classes: int
    finetune: Callable[..., list]
    evaluate: Callable[..., float]
    log_metric: Callable[[str, float, int], None] = lambda k, v, s: None
    ignored_layers: list = field(default_factory=list)
    teacher: Any = None  # the trained dense model (frozen); label-free methods learn from it
    # how this run times latency ({"runtime": ..., "threads": ...}): a method that measures latency while
    # pruning (magnitude's *_latency importance, latency_fraction) does it on the runtime the trial is judged on
    latency: dict = field(default_factory=dict)
    finetune_config: Any = None  # the sweep's fine-tune settings (lr, momentum, temperature, ...)


@dataclass
class PruneResult:
    model: Any
    info: dict = field(default_factory=dict)  # JSON-able details stored with the trial
    finetuned: bool = False  # True when the method already trained the pruned model itself


PruneFn = Callable[[Any, Any, MethodConfig, PruneContext], PruneResult]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    prune: PruneFn
    knobs: tuple[Knob, ...]
    summary: str = ""
    needs_labels: bool = True
    check: Callable[[MethodConfig, str], None] | None = None  # cross-knob validation
    exclusive: tuple[tuple[str, ...], ...] = ()  # knobs of which a space may set at most one
    # knob -> knobs of which one must be given (fixed or searched) where that knob is or may be true
    requires: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # run before a sweep starts, on the dense model and the method's space (MethodSpace.knobs): raise a
    # ConfigError when the method cannot apply, or a knob value the space holds cannot apply to this model
    preflight: Callable[[Any, Any, dict], None] | None = None

    def knob(self, name: str, where: str = "") -> Knob:
        """The knob ``name``: one of :attr:`knobs`, or one stage ``<member>_<i>`` of a ``stages`` knob."""
        for k in self.knobs:
            if k.name == name:
                return k
        for k in self.knobs:
            i = k.member_index(name)
            if i is not None:
                return k.member_knob(i)
        valid = ", ".join(k.name + (f" ({k.member}_0, {k.member}_1, ...)" if k.kind == "stages" else "")
                          for k in self.knobs)
        raise ConfigError(f"unknown knob {name!r} for method {self.name} ({where}); valid knobs: {valid}")

    def family(self, name: str) -> str:
        """The knob ``name`` stands for: the ``stages`` knob of a stage's knob, else ``name`` itself."""
        return next((k.name for k in self.knobs if k.member_index(name) is not None), name)

    def _stage_members(self, names, where: str) -> dict:
        """``{stages knob: [stage knob names in stage order]}`` among ``names``; the stages must be
        numbered 0, 1, ... with none missing (a stage without a ratio has no meaning)."""
        out = {}
        for k in self.knobs:
            found = {k.member_index(n): n for n in names if k.member_index(n) is not None}
            if not found:
                continue
            missing = [i for i in range(max(found) + 1) if i not in found]
            if missing:
                raise ConfigError(f"{k.member}_<i> knobs must be numbered 0, 1, ... with none missing, but got "
                                  f"{', '.join(found[i] for i in sorted(found))} ({where})")
            out[k.name] = [found[i] for i in range(len(found))]
        return out

    def _fold_stages(self, values: Mapping[str, Any], where: str) -> dict:
        """Stage knobs ``<member>_<i>`` (how a sampled trial holds them) -> their ``stages`` knob's tuple."""
        out = dict(values)
        for name, members in self._stage_members(list(out), where).items():
            if out.get(name) is not None:
                raise ConfigError(f"give {name} or its stage knobs, not both, but got {name}={out[name]!r} and "
                                  f"{', '.join(members)} ({where})")
            out[name] = tuple(self.knob(m).validate(out.pop(m), f"{where}.{m}") for m in members)
        return out

    def make_config(self, values: Mapping[str, Any], where: str = "", *, complete: bool = True) -> MethodConfig:
        """The method's config from ``values`` (knob -> value; the rest at their defaults), validated.
        ``complete=False``: ``values`` are only a space's fixed knobs (the searched ones are still to come),
        so :attr:`MethodSpec.requires` is left to the caller."""
        values = self._fold_stages(values, where)
        out = {}
        for k in self.knobs:
            out[k.name] = k.validate(values[k.name], f"{where}.{k.name}") if k.name in values else k.default
        for name in values:
            self.knob(name, where)
        self._check_exclusive([k for k, v in values.items() if v is not None], where)
        if complete:
            self._check_requires({k for k, v in out.items() if v}, {k for k, v in out.items() if v is not None},
                                 where)
        cfg = MethodConfig(self.name, out)
        if self.check is not None:
            self.check(cfg, where)
        return cfg

    def _check_requires(self, on: set, given: set, where: str) -> None:
        """Every knob of :attr:`requires` that is (or may be) on has one of its needed knobs given."""
        for knob, needed in self.requires:
            if knob in on and not any(n in given for n in needed):
                raise ConfigError(f"{knob} needs {' or '.join(needed)} for method {self.name}, but got {knob}=True "
                                  f"and none of them ({where})")

    def _check_exclusive(self, given, where: str) -> None:
        for group in self.exclusive:
            both = [k for k in group if k in given]
            if len(both) > 1:
                raise ConfigError(f"give only one of {', '.join(group)} for method {self.name}, but got "
                                  f"{', '.join(both)} ({where})")

    def parse_space(self, raw: Any, where: str) -> dict:
        """Validate a space entry: knob -> fixed value | {low, high, log, step} | {choices: [...]}."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must map knob names to values or ranges, but got {raw!r}")
        space: dict = {}
        given_by: dict = {}  # space entry -> the key of raw that set it
        for name, v in raw.items():
            knob = self.knob(str(name), where)
            loc = f"{where}.{name}"
            if knob.kind == "stages":
                entries = _parse_stages(knob, v, loc)
            elif isinstance(v, Mapping):
                entries = {knob.name: _parse_distribution(knob, v, loc)}
            else:
                entries = {knob.name: {"fixed": knob.validate(v, loc)}}
            for key, dist in entries.items():
                if key in space:  # a stage set by its family and on its own
                    raise ConfigError(f"each knob must be given once, but got {key} from {given_by[key]} and "
                                      f"from {name} ({where})")
                space[key], given_by[key] = dist, name
        self._stage_members(list(space), where)
        # cross-knob check on the defaults/fixed values so that contradictions fail early
        self._check_exclusive(list(dict.fromkeys(self.family(k) for k in space)), where)
        # stage knobs are left out: some may be fixed and others searched, and each is checked already
        fixed = {k: d["fixed"] for k, d in space.items() if "fixed" in d and self.family(k) == k}
        self.make_config(fixed, where, complete=False)
        # a knob that may be on (fixed true, true among its choices, or on by default) needs a partner that
        # is given (fixed or searched) or set by default
        unset = [k for k in self.knobs if k.name not in space]
        maybe_on = ({k for k, d in space.items() if d.get("fixed") or any(d.get("choices") or ())}
                    | {k.name for k in unset if k.default})
        given = {self.family(k) for k in space} | {k.name for k in unset if k.default is not None}
        self._check_requires(maybe_on, given, where)
        return space


def _parse_stages(knob: Knob, v: Any, loc: str) -> dict:
    """A ``stages`` knob in a space -> one entry per stage knob: ``{stages: S, low, high (log, step)}`` or
    ``{stages: S, choices: [...]}`` gives every stage that distribution; a list fixes one value per stage."""
    if not isinstance(v, Mapping):
        values = knob.validate(v, loc)
        return {f"{knob.member}_{i}": {"fixed": x} for i, x in enumerate(values)}
    d = dict(v)
    if "stages" not in d:
        raise ConfigError(f"{knob.name} must give stages (how many depth stages) with its range, e.g. "
                          f"{{stages: 4, low: 0.0, high: 0.8}}, but got keys {sorted(d)} ({loc})")
    stages = d.pop("stages")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ConfigError(f"stages must be an integer >= 1, but got stages={stages!r} ({loc})")
    dist = _parse_distribution(knob.scalar(), d, loc)
    return {f"{knob.member}_{i}": dict(dist) for i in range(stages)}


def _parse_distribution(knob: Knob, d: Mapping, loc: str) -> dict:
    keys = set(d)
    if knob.kind == "ints":
        raise ConfigError(f"knob {knob.name} is a list of integers: give it a fixed value, not a distribution, "
                          f"but got {dict(d)!r} ({loc})")
    if "choices" in keys:
        if keys - {"choices"}:
            raise ConfigError(f"a choices entry takes no other keys, but got {sorted(keys)} ({loc})")
        choices = d["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"choices must be a non-empty list, but got choices={choices!r} ({loc})")
        return {"choices": [knob.validate(c, loc) for c in choices]}
    allowed = {"low", "high", "log", "step"}
    if keys - allowed or not {"low", "high"} <= keys:
        raise ConfigError(
            f"a range needs low and high (optional log, step), but got keys {sorted(keys)} ({loc})")
    if knob.kind not in ("float", "int"):
        raise ConfigError(f"knob {knob.name} is {knob.kind}: use choices, not a range ({loc})")
    low = knob.validate(d["low"], f"{loc}.low")
    high = knob.validate(d["high"], f"{loc}.high")
    if not low < high:
        raise ConfigError(f"low must be < high, but got low={low!r}, high={high!r} ({loc})")
    log = d.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"log must be true or false, but got log={log!r} ({loc})")
    if log and low <= 0:
        raise ConfigError(f"low of a log range must be > 0, but got low={low!r} ({loc})")
    step = d.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
            raise ConfigError(f"step must be a positive number, but got step={step!r} ({loc})")
        if log:
            raise ConfigError(f"step and log cannot be combined, but got step={step!r}, log=true ({loc})")
        if knob.kind == "int" and float(step) != int(step):
            raise ConfigError(f"step of an integer knob must be an integer, but got step={step!r} ({loc})")
        # Optuna would quietly move high down to the last whole step (or make the range a single value)
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, steps) or round(steps) < 1:
            whole = math.floor(steps + 1e-9)
            fix = f"high {low + whole * step:g} or " if whole >= 1 else ""
            raise ConfigError(f"step must be a divisor of high - low (a range holds both ends), but got "
                              f"step={step!r} for low={low!r}, high={high!r}: {steps:.3g} steps, so try {fix}a step "
                              f"that divides {high - low:g} ({loc})")
    out = {"low": low, "high": high, "log": log}
    if step is not None:
        out["step"] = int(step) if knob.kind == "int" else float(step)
    return out


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, *, knobs: list[Knob], summary: str = "", needs_labels: bool = True,
                    check: Callable[[MethodConfig, str], None] | None = None,
                    exclusive: list[tuple[str, ...]] = (), preflight: Callable[[Any, Any, dict], None] | None = None,
                    requires: Mapping[str, Sequence[str]] | None = None):
    """Register ``prune`` under ``name``; duplicate names raise."""

    names = [k.name for k in knobs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate knob names in method {name}: {names}")

    def deco(fn: PruneFn) -> PruneFn:
        METHODS.add(name, MethodSpec(name=name, prune=fn, knobs=tuple(knobs), summary=summary,
                                     needs_labels=needs_labels, check=check,
                                     exclusive=tuple(tuple(g) for g in exclusive), preflight=preflight,
                                     requires=tuple((k, tuple(v)) for k, v in (requires or {}).items())))
        return fn

    return deco
