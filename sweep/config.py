"""Frozen sweep configuration read from a search-space YAML file.

Unknown keys are rejected; every error names the constraint, the value and where it came from
(``file: dotted.key``).  Method knobs are validated against the method registry here, so a bad
space fails before any Ray process starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

OBJECTIVES = ("accuracy", "agreement", "latency_ms", "params", "macs")
QUALITY = ("accuracy", "agreement")  # the maximised objective: accuracy, or agreement in label-free sweeps
LABEL_MODES = ("supervised", "none")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- helpers
class _Section:
    """Reads one mapping of the YAML, remembering where each value came from."""

    def __init__(self, data: Any, where: str, allowed: tuple[str, ...], sep: str = "."):
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping, but got {type(data).__name__} {data!r}")
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in {where}; allowed keys: {', '.join(allowed)}"
            )
        self.data = dict(data)
        self.where, self.sep = where, sep  # the file's top level: "x.yaml: seed", a section's "x.yaml: model.name"

    def loc(self, key: str) -> str:
        return f"{self.where}{self.sep}{key}"

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def int(self, key: str, default: int | None, lo: int | None = None, hi: int | None = None,
            required: bool = False) -> int | None:
        if key not in self.data or self.data[key] is None:
            if required:
                raise ConfigError(f"{key} is required ({self.loc(key)})")
            return default
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key} must be an integer, but got {key}={v!r} ({self.loc(key)})")
        _range(key, v, lo, hi, self.loc(key))
        return v

    def float(self, key: str, default: float | None, lo: float | None = None, hi: float | None = None,
              lo_open: bool = False) -> float | None:
        if key not in self.data or self.data[key] is None:
            return default
        v = self.data[key]
        if isinstance(v, str):
            try:  # YAML reads "5e-4" as a string
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number, but got {key}={v!r} ({self.loc(key)})")
        v = float(v)
        if lo_open and lo is not None and v <= lo:
            raise ConfigError(f"{key} must be > {lo}, but got {key}={v!r} ({self.loc(key)})")
        _range(key, v, None if lo_open else lo, hi, self.loc(key))
        return v

    def str(self, key: str, default: str | None, choices: tuple[str, ...] | None = None,
            required: bool = False) -> str | None:
        if key not in self.data or self.data[key] is None:
            if required:
                raise ConfigError(f"{key} is required ({self.loc(key)})")
            return default
        v = self.data[key]
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{key} must be a non-empty string, but got {key}={v!r} ({self.loc(key)})")
        if choices is not None and v not in choices:
            raise ConfigError(
                f"{key} must be one of {', '.join(choices)}, but got {key}={v!r} ({self.loc(key)})"
            )
        return v

    def bool(self, key: str, default: bool) -> bool:
        if key not in self.data or self.data[key] is None:
            return default
        v = self.data[key]
        if not isinstance(v, bool):
            raise ConfigError(f"{key} must be true or false, but got {key}={v!r} ({self.loc(key)})")
        return v


def _range(key: str, v: float, lo: float | None, hi: float | None, where: str) -> None:
    if lo is not None and v < lo:
        raise ConfigError(f"{key} must be >= {lo}, but got {key}={v!r} ({where})")
    if hi is not None and v > hi:
        raise ConfigError(f"{key} must be <= {hi}, but got {key}={v!r} ({where})")


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class ModelConfig:
    name: str
    checkpoint: str | None = None
    keep_layers: tuple[str, ...] = ()  # module names whose output channels no method may prune


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings shared by baseline training and fine-tuning (SGD, cosine schedule)."""

    epochs: int
    lr: float
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    temperature: float = 4.0  # label-free fine-tuning: distillation temperature on the teacher's logits
    # the training state is kept after every epoch, so that a training cut short (the driver killed, a node
    # lost) goes on from its last epoch instead of starting over (sweep.train.EpochCheckpoint)
    checkpoint: bool = True
    # ... saved after the first epoch that ends at least this long after the last save (0: after every epoch)
    checkpoint_every_s: float = 10.0


@dataclass(frozen=True)
class BaselineConfig:
    path: str | None
    train: TrainConfig
    # label-free demos: the teacher is trained on this labelled "cloud" fraction of the training split,
    # kept disjoint from the unlabeled device data the trials see
    cloud_fraction: float | None = None
    # a non-neural teacher fitted on the unlabeled training inputs (baseline.teacher.mbn: sweep.mbn.MBNConfig);
    # the dense model is then a student trained on the teacher's cluster indices
    teacher: Any = None
    # the dense model fine-tuned like a trial (finetune.*, nothing removed) once per sweep, before the trials:
    # the reference a pruned trial's quality is read against (trial.dense_reference); opt-in, since it costs
    # one trial's fine-tuning outside the trials' time budget
    reference: bool = False


@dataclass(frozen=True)
class SearchConfig:
    trials: int = 12
    concurrency: int = 2
    sampler: str = "tpe"
    objectives: tuple[str, ...] = ("accuracy", "latency_ms")
    cpus_per_trial: float = 1.0
    time_budget_s: float | None = None
    # fine-tune epochs the finished trials may spend in all, over every run of the sweep: once spent, no trial
    # starts (the running ones finish); the budget of a successive-halving sweep, whose trials cost 0-N epochs
    epoch_budget: int | None = None
    # a trial whose worker died (its node lost, killed for memory) runs again this many times; a trial's own
    # error is a failed row, never retried (it would fail again)
    retries: int = 1
    gpus_per_trial: float = 0.0  # Ray GPUs per trial; fractions pack several trials on one GPU (0.25: four)
    scheduler: Any = None  # sweep.mo_asha.MOASHASettings (search.scheduler: {type: mo_asha, ...}); None: FIFO
    constraints: Any = None  # sweep.constraints.Constraints (hard budgets; empty: none)
    # the sampler sees the trials in the order it drew them, `concurrency` behind each draw: a seed draws the
    # same candidates whatever the load (driver._sweep_search); off: each draw sees every trial finished so far
    reproducible: bool = False


@dataclass(frozen=True)
class MeasureConfig:
    latency_batch: int = 1
    warmup: int = 10
    repeats: int = 50
    device: str = "cpu"
    threads: int | None = None  # None: the trial's CPU share (whole CPUs, at least 1)
    # after the sweep, latency taken while trials shared the machine is re-measured alone:
    # "all" ok trials (front members first), only the "front" (repeated while it changes), or "none"
    remeasure: str = "all"
    # where latency is timed (sweep.measure.RUNTIMES); the YAML may leave it out: then onnxruntime on a
    # CPU where it is installed, else torch (sweep.measure.default_runtime). Always a name here.
    runtime: str = "torch"


@dataclass(frozen=True)
class MethodSpace:
    """One method's part of the search space: knob name -> fixed value or distribution dict."""

    name: str
    knobs: dict  # knob -> {"fixed": v} | {"low", "high", "log", "step"} | {"choices": [...]}


@dataclass(frozen=True)
class SweepConfig:
    name: str
    source: str
    seed: int
    labels: str
    model: ModelConfig
    dataset: DatasetConfig
    baseline: BaselineConfig
    finetune: TrainConfig
    search: SearchConfig
    measure: MeasureConfig
    methods: tuple[MethodSpace, ...]
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def label_free(self) -> bool:
        return self.labels == "none"

    @property
    def labelled_data(self) -> bool:
        """False when the space has unlabeled data alone (``dataset: {unlabeled: …}``): accuracy is unknown."""
        return self.dataset.name != UNLABELED_DATASET

    @property
    def quality(self) -> str:
        """The maximised objective: ``accuracy``, or ``agreement`` in a label-free sweep."""
        return "agreement" if self.label_free else "accuracy"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("raw", None)
        return d

    def method(self, name: str) -> MethodSpace:
        for m in self.methods:
            if m.name == name:
                return m
        raise ConfigError(f"method {name!r} is not in this sweep's space ({self.source}: methods)")


TOP_KEYS = ("name", "seed", "labels", "model", "dataset", "baseline", "train", "finetune", "search", "measure",
            "methods")


def yaml_loader():
    """A ``yaml.SafeLoader`` that rejects a key given twice in one mapping (PyYAML keeps the last).

    Every YAML file the project reads goes through it (:func:`read_yaml`); a duplicate raises
    :class:`DuplicateKeyError` with the key and both line numbers.  Keys brought in by a merge (``<<:``)
    may still be overridden, as YAML allows."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class DuplicateKeyError(yaml.constructor.ConstructorError):
            def __init__(self, key, first, again):
                super().__init__("while constructing a mapping", first,
                                 f"found duplicate key {key!r} (first at line {first.line + 1})", again)
                self.key, self.first_line, self.line = key, first.line + 1, again.line + 1

        class UniqueKeyLoader(yaml.SafeLoader):
            def construct_mapping(self, node, deep=False):
                if isinstance(node, yaml.MappingNode):
                    seen: dict = {}
                    for key_node, _ in node.value:
                        if key_node.tag == "tag:yaml.org,2002:merge":
                            continue
                        key = self.construct_object(key_node, deep=True)
                        try:
                            first = seen.setdefault(key, key_node.start_mark)
                        except TypeError:  # an unhashable key: SafeLoader says so itself
                            continue
                        if first is not key_node.start_mark:
                            raise DuplicateKeyError(key, first, key_node.start_mark)
                return super().construct_mapping(node, deep=deep)

        UniqueKeyLoader.DuplicateKeyError = DuplicateKeyError
        _LOADER = UniqueKeyLoader
    return _LOADER


_LOADER = None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Parse a YAML file as UTF-8 with :func:`yaml_loader`; every failure is one :class:`ConfigError`
    naming the file (and the line, the key or the byte offset)."""
    import yaml

    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} must be readable, but got {type(e).__name__}: {e.strerror or e} ({p})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{what} must be UTF-8 text, but got byte 0x{raw[e.start]:02x} at byte offset {e.start} "
                          f"(line {line}) ({p}); save it as UTF-8") from None
    loader = yaml_loader()
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader subclass: no arbitrary objects
    except loader.DuplicateKeyError as e:
        raise ConfigError(f"keys must be unique in each YAML mapping, but got key {e.key!r} twice, at lines "
                          f"{e.first_line} and {e.line} ({p})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {p}{at}: {problem}") from None


def load_config(path: str | Path, *, name: str | None = None) -> SweepConfig:
    """Read and validate a search-space YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space file not found: {str(path)!r}")
    data = read_yaml(p, "search space file")
    cfg = parse_config(data, source=str(p))
    if name:
        cfg = _with_name(cfg, name)
    return cfg


def _with_name(cfg: SweepConfig, name: str) -> SweepConfig:
    if not NAME_RE.match(name):
        raise ConfigError(f"sweep name must match {NAME_RE.pattern}, but got name={name!r} (--name)")
    from dataclasses import replace

    return replace(cfg, name=name)


def parse_config(data: Any, *, source: str = "<config>") -> SweepConfig:
    top = _Section(data, source, TOP_KEYS, sep=": ")
    name = top.str("name", None) or Path(source).stem
    if not NAME_RE.match(name):
        raise ConfigError(f"sweep name must match {NAME_RE.pattern}, but got name={name!r} ({source}: name)")
    seed = top.int("seed", 0, lo=0)
    labels = top.str("labels", "supervised", choices=LABEL_MODES)

    m = _Section(top.get("model"), f"{source}: model", ("name", "checkpoint", "keep_layers"))
    keep = m.get("keep_layers") or []
    if not isinstance(keep, list) or not all(isinstance(k, str) and k for k in keep):
        raise ConfigError(f"keep_layers must be a list of module names, but got keep_layers={keep!r} "
                          f"({m.loc('keep_layers')})")
    model = ModelConfig(name=m.str("name", None, required=True), checkpoint=m.str("checkpoint", None),
                        keep_layers=tuple(keep))

    draw = top.get("dataset")
    if isinstance(draw, str):
        draw = {"name": draw}
    if isinstance(draw, Mapping) and "name" not in draw and "unlabeled" in draw:
        draw = {"name": UNLABELED_DATASET, **draw}  # unlabeled data alone: no labelled set
    if not isinstance(draw, Mapping) or "name" not in draw:
        raise ConfigError(f"dataset must be a mapping with a name (or with unlabeled: <path> alone), but got "
                          f"dataset={draw!r} ({source}: dataset)")
    dopts = {k: v for k, v in draw.items() if k != "name"}
    if draw.get("unlabeled") is not None or draw["name"] == UNLABELED_DATASET:
        dopts["unlabeled"] = _unlabeled_source(draw.get("unlabeled"), labels, source)
        if isinstance(data, Mapping) and isinstance(data.get("dataset"), Mapping):  # the sweep folder's copy too
            data = {**data, "dataset": {**data["dataset"], "unlabeled": dopts["unlabeled"]}}
    dataset = DatasetConfig(name=str(draw["name"]), options=dopts)

    t = _Section(top.get("train"), f"{source}: train",
                 ("batch_size", "momentum", "weight_decay", "optimizer"))
    common = dict(
        batch_size=t.int("batch_size", 64, lo=1),
        momentum=t.float("momentum", 0.9, lo=0.0, hi=1.0),
        weight_decay=t.float("weight_decay", 5e-4, lo=0.0),
        optimizer=t.str("optimizer", "sgd", choices=("sgd", "adam")),
    )

    braw = top.get("baseline")
    if isinstance(braw, str):
        braw = {"path": braw}
    b = _Section(braw, f"{source}: baseline", ("path", "epochs", "lr", "cloud_fraction", "teacher", "reference"))
    teacher = _teacher(b.get("teacher"), b.loc("teacher"), labels, seed, b.data)
    bpath = b.str("path", None)
    if bpath is not None:
        bp = Path(bpath)
        if not bp.is_absolute():
            bp = (Path(source).resolve().parent / bp) if not bp.exists() else bp.resolve()
        if not bp.is_file():
            raise ConfigError(f"baseline checkpoint not found: path={bpath!r} ({source}: baseline.path)")
        bpath = str(bp)
    cloud = b.float("cloud_fraction", None, lo=0.0, hi=0.9, lo_open=True)
    alone = dataset.name == UNLABELED_DATASET  # no labelled set: the teacher must be given, not trained
    if alone and bpath is None and teacher is None:
        raise ConfigError(f"unlabeled data alone (no labelled dataset) needs a teacher that reads no label: "
                          f"baseline.path (a model trained elsewhere) or baseline.teacher (e.g. mbn), but got "
                          f"{'only cloud_fraction, which needs labels' if cloud is not None else 'none'} "
                          f"({source}: baseline)")
    if labels == "none" and bpath is None and cloud is None and teacher is None and "unlabeled" not in dopts:
        raise ConfigError(f"a label-free space (labels: none) needs a teacher: baseline.path (a checkpoint "
                          f"trained elsewhere), baseline.cloud_fraction (a labelled split kept apart "
                          f"from the device data), baseline.teacher (e.g. mbn: an unsupervised teacher) or "
                          f"dataset.unlabeled (your device data; the teacher is then trained on the labelled "
                          f"dataset), but got none ({source}: baseline)")
    if cloud is not None and "unlabeled" in dopts:
        raise ConfigError(f"baseline.cloud_fraction carves device data out of the labelled training split, but "
                          f"dataset.unlabeled already is the device data (the teacher trains on the whole "
                          f"labelled split): leave cloud_fraction out, but got cloud_fraction={cloud} "
                          f"({source}: baseline.cloud_fraction)")
    if alone:
        dopts["num_classes"] = _outputs_alone(dopts.get("num_classes"), teacher, source)
    if cloud is not None and (labels != "none" or bpath is not None):
        raise ConfigError(f"baseline.cloud_fraction is only for label-free spaces without baseline.path, "
                          f"but got cloud_fraction={cloud} with labels={labels}"
                          f"{', path=' + repr(bpath) if bpath else ''} ({source}: baseline.cloud_fraction)")
    baseline = BaselineConfig(
        path=bpath,
        train=TrainConfig(epochs=b.int("epochs", 20, lo=0), lr=b.float("lr", 0.05, lo=0.0, lo_open=True),
                          **common),
        cloud_fraction=cloud,
        teacher=teacher,
        reference=b.bool("reference", False),
    )
    f = _Section(top.get("finetune"), f"{source}: finetune",
                 ("epochs", "lr", "temperature", "checkpoint", "checkpoint_every_s"))
    finetune = TrainConfig(epochs=f.int("epochs", 3, lo=0), lr=f.float("lr", 0.01, lo=0.0, lo_open=True),
                           temperature=f.float("temperature", 4.0, lo=0.0, lo_open=True),
                           checkpoint=f.bool("checkpoint", True),
                           checkpoint_every_s=f.float("checkpoint_every_s", 10.0, lo=0.0), **common)
    if f.get("temperature") is not None and labels != "none":  # it would be read by nothing
        raise ConfigError(f"temperature must be left out unless labels is none (label-free fine-tuning distils "
                          f"the teacher at that temperature), but got temperature={f.get('temperature')!r} with "
                          f"labels={labels} ({f.loc('temperature')})")

    s = _Section(top.get("search"), f"{source}: search",
                 ("trials", "concurrency", "sampler", "objectives", "cpus_per_trial", "time_budget_s", "retries",
                  "gpus_per_trial", "scheduler", "constraints", "epoch_budget", "reproducible"))
    quality = "agreement" if labels == "none" else "accuracy"
    objectives = s.get("objectives", [quality, "latency_ms"])
    if not isinstance(objectives, list) or not objectives:
        raise ConfigError(f"objectives must be a non-empty list, but got objectives={objectives!r} "
                          f"({s.loc('objectives')})")
    for o in objectives:
        if o not in OBJECTIVES:
            raise ConfigError(f"objectives must be among {', '.join(OBJECTIVES)}, but got {o!r} "
                              f"({s.loc('objectives')})")
    other = "accuracy" if quality == "agreement" else "agreement"
    if other in objectives:
        why = ("label-free sweeps choose on agreement with the teacher; accuracy is only reported"
               if labels == "none" else "agreement is the objective of label-free spaces (labels: none)")
        raise ConfigError(f"objectives must not hold {other} ({why}), but got objectives={objectives!r} "
                          f"({s.loc('objectives')})")
    if quality not in objectives or len(objectives) < 2 or len(set(objectives)) != len(objectives):
        raise ConfigError(f"objectives must hold {quality} and at least one of latency_ms, params, macs, "
                          f"each once, but got objectives={objectives!r} ({s.loc('objectives')})")
    from .constraints import parse_constraints
    from .mo_asha import parse_scheduler

    search = SearchConfig(
        trials=s.int("trials", 12, lo=1),
        concurrency=s.int("concurrency", 2, lo=1),
        sampler=s.str("sampler", "tpe", choices=SAMPLERS),
        objectives=tuple(objectives),
        cpus_per_trial=s.float("cpus_per_trial", 1.0, lo=0.0, lo_open=True),
        time_budget_s=s.float("time_budget_s", None, lo=0.0, lo_open=True),
        epoch_budget=s.int("epoch_budget", None, lo=1),
        retries=s.int("retries", 1, lo=0),
        gpus_per_trial=s.float("gpus_per_trial", 0.0, lo=0.0),
        scheduler=parse_scheduler(s.get("scheduler"), s.loc("scheduler"), max_epochs=finetune.epochs),
        constraints=parse_constraints(s.get("constraints"), s.loc("constraints")),
        reproducible=s.bool("reproducible", False),
    )
    if search.scheduler is not None and search.scheduler.promote and not finetune.checkpoint:
        raise ConfigError(f"promote must be false unless finetune.checkpoint is true (a promoted trial goes on "
                          f"from the fine-tune state saved at the rung where it stopped), but got promote=true with "
                          f"finetune.checkpoint=false ({s.loc('scheduler')}.promote)")
    if search.epoch_budget is not None and finetune.epochs == 0:
        raise ConfigError(f"epoch_budget must be left out when trials fine-tune no epoch (it counts fine-tune "
                          f"epochs), but got epoch_budget={search.epoch_budget} with finetune.epochs=0 "
                          f"({s.loc('epoch_budget')})")

    ms = _Section(top.get("measure"), f"{source}: measure",
                  ("latency_batch", "warmup", "repeats", "device", "threads", "remeasure", "runtime"))
    device = ms.str("device", "cpu")
    if not re.match(r"^(cpu|cuda(:\d+)?|mps)$", device):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or mps, but got device={device!r} "
                          f"({ms.loc('device')})")
    from .measure import RUNTIMES, check_runtime, default_runtime

    runtime = ms.str("runtime", None, choices=RUNTIMES)
    runtime = default_runtime(device) if runtime is None else check_runtime(runtime, device, ms.loc("runtime"))
    measure = MeasureConfig(
        latency_batch=ms.int("latency_batch", 1, lo=1),
        warmup=ms.int("warmup", 10, lo=0),
        repeats=ms.int("repeats", 50, lo=3),
        device=device,
        threads=ms.int("threads", None, lo=1),
        remeasure=ms.str("remeasure", "all", choices=("all", "front", "none")),
        runtime=runtime,
    )

    methods = parse_methods(top.get("methods"), f"{source}: methods", label_free=labels == "none")
    return SweepConfig(name=name, source=source, seed=seed, labels=labels, model=model, dataset=dataset,
                       baseline=baseline,
                       finetune=finetune, search=search, measure=measure, methods=methods,
                       raw=dict(data) if isinstance(data, Mapping) else {})


UNLABELED_DATASET = "unlabeled"  # the registered dataset of unlabeled data alone (sweep.data.sources)


def _unlabeled_source(raw: Any, labels: str, source: str) -> str:
    """``dataset.unlabeled``: only in label-free spaces; an existing path, relative to the YAML file when it
    is not found from the working directory (as baseline.path), returned absolute."""
    where = f"{source}: dataset.unlabeled"
    if labels != "none":
        raise ConfigError(f"dataset.unlabeled is data without labels, so the space must be label-free: set labels: "
                          f"none, but got labels={labels} with unlabeled={raw!r} ({where})")
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"unlabeled must be a path to a flat folder of images or a .npy file, but got "
                          f"unlabeled={raw!r} ({where})")
    p = Path(raw).expanduser()
    looked = [p]
    if not p.is_absolute():
        beside = Path(source).resolve().parent / p
        looked = [Path.cwd() / p, beside]
        p = beside if not p.exists() else p.resolve()
    if not p.exists():
        places = " nor ".join(str(q) for q in dict.fromkeys(looked))
        raise ConfigError(f"unlabeled must be an existing folder of images or a .npy file, but got "
                          f"unlabeled={raw!r}, which is neither {places} ({where})")
    return str(p)


def _outputs_alone(given: Any, teacher: Any, source: str) -> int:
    """``dataset.num_classes`` of unlabeled data alone: the teacher's outputs (an MBN teacher's clusters)."""
    where = f"{source}: dataset.num_classes"
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 2):
        raise ConfigError(f"num_classes must be an integer >= 2, but got num_classes={given!r} ({where})")
    if teacher is not None:
        if given is not None and given != teacher.clusters:
            raise ConfigError(f"num_classes must equal the MBN teacher's clusters ({teacher.clusters}), but got "
                              f"num_classes={given} ({where})")
        return int(teacher.clusters)
    if given is None:
        raise ConfigError(f"unlabeled data alone needs num_classes, the number of outputs of the model in "
                          f"baseline.path, but got none ({where})")
    return int(given)


TEACHERS = ("mbn",)


def _teacher(raw: Any, where: str, labels: str, seed: int, baseline: Mapping) -> Any:
    """``baseline.teacher: {mbn: {...}}``: the settings of an unsupervised teacher, or None."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or len(raw) != 1 or next(iter(raw)) not in TEACHERS:
        raise ConfigError(f"teacher must be a mapping with one key, {' or '.join(TEACHERS)}, but got "
                          f"teacher={raw!r} ({where})")
    from .mbn.config import MBNConfig

    kind, settings = next(iter(raw.items()))
    if labels != "none":
        raise ConfigError(f"a {kind} teacher reads no labels, so the space must be label-free: set labels: none "
                          f"(the dense student then learns the teacher's clusters), but got labels={labels} "
                          f"({where}.{kind})")
    for other in ("path", "cloud_fraction"):
        if baseline.get(other) is not None:
            raise ConfigError(f"baseline.teacher must be the only teacher, but got baseline.{other}="
                              f"{baseline[other]!r} too ({where})")
    settings = dict(settings or {}) if isinstance(settings, Mapping) else settings
    if isinstance(settings, dict):
        settings.setdefault("seed", seed)  # the sweep's seed, unless the teacher has its own
    return MBNConfig.from_mapping(settings, where=f"{where}.{kind}")


def parse_methods(raw: Any, where: str, label_free: bool = False) -> tuple[MethodSpace, ...]:
    """Validate the per-method knob spaces against the method registry."""
    from .methods import get_method

    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"methods must be a non-empty mapping of method name -> knobs, but got "
                          f"methods={raw!r} ({where})")
    out = []
    for mname, knobs in raw.items():
        spec = get_method(str(mname), where=f"{where}.{mname}")
        if label_free and spec.needs_labels:
            raise ConfigError(f"method {spec.name} needs training labels and cannot run in a label-free space "
                              f"(labels: none) ({where}.{mname})")
        out.append(MethodSpace(name=spec.name, knobs=spec.parse_space(knobs or {}, f"{where}.{mname}")))
    return tuple(out)
