"""Measurement, in one place: accuracy, params, MACs and latency.

Latency follows the usual protocol: warm-up runs, then many timed repeats under
``torch.inference_mode``; the median and the inter-quartile range are reported together with the
batch size, thread count and device, because a latency figure means nothing without them.

A network whose outputs are not finite (diverged in fine-tuning, or broken by a pruning step) is a
failed trial: :func:`accuracy` and :func:`agreement` check the logits they compute anyway and raise
:class:`~sweep.errors.TrialFailure` ("diverged: ..."), with no extra forward pass.  (Accuracy itself is a
ratio of counts, always finite: a check on it could never fire.)

**Runtimes.** Latency is timed on the runtime the model will be deployed on, because at batch 1 on
small inputs eager PyTorch spends much of a forward in per-layer Python and dispatch overhead that a
deployment runtime does not pay (so eager figures understate what pruning buys). ``runtime`` is one
of :data:`RUNTIMES`:

* ``torch`` -- eager PyTorch under ``torch.inference_mode`` (``torch.set_num_threads(threads)``);
* ``onnxruntime`` -- the model exported once to ONNX (:func:`export_onnx`) and run by an ONNX Runtime
  ``InferenceSession`` with ``intra_op_num_threads = threads``, ``inter_op_num_threads = 1`` and
  sequential execution, all graph optimisations on (ORT's defaults for deployment; see
  https://onnxruntime.ai/docs/performance/tune-performance/threading.html), idle threads not spinning;
* ``torch_compile`` -- ``torch.compile`` (Inductor); the first warm-up call compiles.

The default (:func:`default_runtime`) is ``onnxruntime`` on a CPU where it is installed, else
``torch`` (said once per process), and ``torch`` on CUDA. Every runtime follows the same protocol
(warm-up, timed repeats, median and IQR) and every :class:`Latency` names its runtime and version.

**MACs are a function of the architecture.** A network's MACs depend on its modules, their settings and
shapes and the input's shape, never on its weights' values (the networks here are static graphs: the
ONNX export traces each to one fixed graph, and checks it on a fresh input). :func:`count_macs` therefore
remembers the count of each :func:`architecture_key` in this process: a trial counts the dense network
before pruning, the pruned one after, and the sweep's other trials meet the same architectures again.
Likewise the ONNX graph a latency is timed on: :func:`export_onnx` with ``remember=True`` traces an
architecture once per process, and a later network of the same architecture gets that graph with its own
weights put in (checked like a fresh export); see :func:`export_onnx`. A network timed again and again as it
is -- the dense baseline every trial times its pruned network beside -- keeps its whole runner (graph and
session) under a key its caller gives (:func:`kept_runner`).
"""

from __future__ import annotations

import math
import re
import statistics
import sys
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Callable

from .errors import ConfigError, TrialFailure

RUNTIMES = ("torch", "onnxruntime", "torch_compile")
# Opset of the ONNX export: 17 is the newest every onnxruntime >= 1.14 runs, and it covers every op
# of the project's models (convolutions, batch norm, pooling, concat, add, linear).
ONNX_OPSET = 17


@dataclass(frozen=True)
class Latency:
    median_ms: float
    iqr_ms: float
    batch: int
    repeats: int
    threads: int
    device: str
    runtime: str = ""  # runtime and version, e.g. "onnxruntime 1.20.1" (see runtime_label)

    def to_dict(self) -> dict:
        return asdict(self)

    def scaled(self, factor: float) -> "Latency":
        """The same timing with its median and spread multiplied by ``factor``: put on another timing's scale
        (a ratio to the dense network timed beside it, times the baseline's latency)."""
        return replace(self, median_ms=self.median_ms * factor, iqr_ms=self.iqr_ms * factor)


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


_SETTING_TYPES = (bool, int, float, str, tuple, type(None))


def _input_key(x) -> tuple:
    """Shapes and dtypes of (nested) example inputs; other values by their repr."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return ("tensor", tuple(x.shape), str(x.dtype))
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, *(_input_key(v) for v in x))
    if isinstance(x, dict):
        return ("dict", *((k, _input_key(v)) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))))
    return ("value", repr(x))


def architecture_key(model, example_inputs=None) -> tuple:
    """What fixes a static network's costs, as a hashable key: every module's name, class, settings
    (``extra_repr`` and its plain public attributes: strides, flags, the training mode) and its own
    parameters' and buffers' names, shapes and dtypes, with the inputs' shapes and dtypes -- not the
    weights' values."""
    mods = []
    for name, m in model.named_modules():
        settings = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in vars(m).items()
                                if not k.startswith("_") and isinstance(v, (*_SETTING_TYPES, list))
                                and (not isinstance(v, list) or all(isinstance(e, _SETTING_TYPES) for e in v))))
        # the module's own tables, not named_parameters(recurse=False): those walk a generator per module
        tensors = tuple((n, tuple(t.shape), str(t.dtype)) for own in (m._parameters, m._buffers)
                        for n, t in own.items() if t is not None)
        mods.append((name, f"{type(m).__module__}.{type(m).__qualname__}", m.extra_repr(), settings, tensors))
    return tuple(mods), _input_key(example_inputs)


_MACS: OrderedDict = OrderedDict()  # architecture_key -> MACs, most recently used last
MACS_REMEMBERED = 256  # architectures: a sweep's trials draw from far fewer per worker process


def count_macs(model, example_inputs) -> int:
    """MACs of one forward pass (Torch-Pruning's counter, which works on a copy), remembered per
    architecture in this process (see the module docstring)."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        key = architecture_key(model, example_inputs)
        if key in _MACS:
            _MACS.move_to_end(key)
            return _MACS[key]
        with torch.no_grad():
            macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    finally:
        model.train(was_training)
    _MACS[key] = int(macs)
    if len(_MACS) > MACS_REMEMBERED:
        _MACS.popitem(last=False)
    return int(macs)


@contextmanager
def threads_kept():
    """torch's intra-op thread count as it was before the block, whatever the block sets: training a
    baseline, a trial or a measurement in the caller's process (``run_sweep``, ``sweep select``, a notebook)
    must not change how the caller's own torch code runs -- a thread count changes float summation order,
    and with it every later seeded training."""
    import torch

    prev = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def check_finite(logits, where: str) -> None:
    """Raise :class:`TrialFailure` ("diverged: ...") when ``logits`` hold a NaN or an infinity."""
    import torch

    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        raise TrialFailure(f"diverged: the network outputs non-finite values ({int(bad.sum())} of "
                           f"{bad.numel()} logits in a batch of {logits.shape[0]}, {where})")


def accuracy(model, loader, device: str = "cpu") -> float:
    """Top-1 accuracy in eval mode; labels are only read here, for reporting and validation."""
    import torch

    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            logits = model(x.to(device))
            check_finite(logits, "measuring accuracy")
            pred = logits.argmax(dim=1)
            correct += int((pred.cpu() == y).sum())
            total += int(y.numel())
    if total == 0:
        raise ValueError("cannot measure accuracy on an empty split")
    return correct / total


def agreement(model, teacher, loader, device: str = "cpu") -> float:
    """Top-1 agreement with the teacher on unlabeled batches (reads ``batch[0]`` only): the
    label-free quality proxy that label-free sweeps search and select on."""
    import torch

    model.eval()
    teacher.eval()
    same = total = 0
    with torch.inference_mode():
        for batch in loader:
            x = batch[0].to(device)
            logits = model(x)
            check_finite(logits, "measuring agreement")
            same += int((logits.argmax(1) == teacher(x).argmax(1)).sum())
            total += x.shape[0]
    if total == 0:
        raise ValueError("cannot measure agreement on an empty split")
    return same / total


# ------------------------------------------------------------------------------------------- runtimes
_FALLBACK_SAID = False


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def default_runtime(device: str = "cpu", *, say: Callable[[str], None] | None = None) -> str:
    """``onnxruntime`` on a CPU where it is installed, else ``torch``; ``torch`` on CUDA (and MPS).

    Without onnxruntime on a CPU the fallback is said once per process (to ``say``, default stderr):
    the figures are then eager-PyTorch latencies, which a deployment does not see."""
    global _FALLBACK_SAID
    if not device.startswith("cpu"):
        return "torch"
    if onnxruntime_available():
        return "onnxruntime"
    if not _FALLBACK_SAID:
        _FALLBACK_SAID = True
        msg = ("sweep: note: onnxruntime is not installed, so latency is timed in eager PyTorch "
               "(measure.runtime: torch); `pip install onnxruntime` to time on the deployment runtime")
        (say or (lambda m: print(m, file=sys.stderr)))(msg)
    return "torch"


def check_runtime(runtime: str, device: str, where: str = "measure.runtime") -> str:
    """``runtime`` if it can time on ``device`` here; a one-line :class:`ConfigError` otherwise."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, but got runtime={runtime!r} ({where})")
    if runtime == "onnxruntime":
        if not onnxruntime_available():
            raise ConfigError(f"runtime onnxruntime needs the onnxruntime package, but got runtime={runtime!r} "
                              f"with onnxruntime not installed ({where}); pip install onnxruntime, or use torch")
        if device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(f"runtime onnxruntime on {device} needs onnxruntime-gpu (CUDAExecutionProvider), "
                                  f"but got runtime={runtime!r} with providers "
                                  f"{', '.join(ort.get_available_providers())} ({where}); use torch on CUDA")
        elif device != "cpu":
            raise ConfigError(f"runtime onnxruntime times on cpu or cuda, but got runtime={runtime!r} with "
                              f"device={device!r} ({where})")
    return runtime


def resolve_runtime(runtime: str | None, device: str = "cpu") -> str:
    """The runtime to time on: ``runtime`` checked, or :func:`default_runtime` when None."""
    return default_runtime(device) if runtime is None else check_runtime(runtime, device)


def runtime_label(runtime: str) -> str:
    """Runtime name and version as recorded with every latency figure, e.g. ``onnxruntime 1.20.1``."""
    import torch

    if runtime == "onnxruntime":
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"
    if runtime == "torch_compile":
        return f"torch_compile {torch.__version__} (inductor)"
    return f"torch {torch.__version__}"


def runtime_of_label(label: str | None) -> str:
    """The runtime name a :func:`runtime_label` names (``torch 2.x`` -> ``torch``); ``torch`` when unknown."""
    return (label or "torch").split()[0]


# ONNX graphs traced in this process for timing, per architecture_key with the input's shape (see
# export_onnx's ``remember``): most recently used last, kept up to ONNX_REMEMBERED_BYTES in all
_ONNX: OrderedDict = OrderedDict()
ONNX_REMEMBERED_BYTES = 64 * 2**20


def export_onnx(model, example, *, check: bool = True, remember: bool = False, threads: int = 1) -> bytes:
    """``model`` as an ONNX model (serialised bytes) for a fixed input of ``example``'s shape.

    The TorchScript-tracing exporter (``dynamo=False``) first: on this project's models (plain, residual
    and concatenation nets, torchvision's ResNet, DenseNet, GoogLeNet, MobileNetV2) it exported every
    one with outputs equal to eager PyTorch, 3-15x faster than the ``torch.export``-based exporter
    (0.1-1.3 s against 1-6 s per pruned model on 2 CPU cores), and its graphs ran as fast or faster in
    onnxruntime (DenseNet-121 at 64x64: 2.8 ms against 7.4 ms). PyTorch deprecates it, so the
    ``dynamo=True`` exporter (needs onnxscript) is the fallback when it fails or is gone. Shapes are
    static (no dynamic axes), which lets the runtime plan memory and fuse for the measured batch.
    ``check=False`` skips comparing the graph's outputs with the model's (for single standard layers).

    ``remember=True`` (a graph to time, as :func:`make_runner` asks): the graph is exported without
    constant folding, so that its initializers are the model's own parameters and buffers by name, and
    remembered for this architecture; a later model of the same :func:`architecture_key` (and input shape)
    gets the remembered graph with its own weights put in -- 0.1 ms for ``small_cnn`` and 1.6 ms for
    ResNet-20 against 12 and 77 ms for a trace, on 2 loaded cores -- and the same output check.  A graph
    whose initializers are not all named parameters or buffers, or that shares one initializer between
    several (the exporter merges equal tensors), is not remembered.  ONNX Runtime folds constants and fuses
    convolutions with their BatchNorm itself (``ORT_ENABLE_ALL``): the unfolded graph of ResNet-20 and of
    ``small_cnn`` ran as fast as the folded one (median ratio 0.999 and 1.006, interleaved runs).
    Without ``remember`` (``sweep select``'s exported file), constants are folded as before.

    The check runs the graph in an ONNX Runtime session with ``threads`` intra-op threads; that session is
    kept for the next :func:`make_runner` of the very same bytes (see :func:`_checked_session`), so a graph
    exported to be timed is loaded into a session once, not twice.
    """
    import contextlib
    import io
    import warnings

    import torch

    model = model.eval()
    key = architecture_key(model, (example,)) if remember else None
    if key is not None and key in _ONNX:
        try:
            onnx_model = _with_weights(_ONNX[key], model)
            if check:
                _check_export(model, example, onnx_model, threads)
            _ONNX.move_to_end(key)
            return onnx_model
        except Exception:  # not this model's graph after all: forget it and trace afresh
            del _ONNX[key]
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                warnings.simplefilter("ignore")
                if not dynamo:
                    buf = io.BytesIO()
                    torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"],
                                      output_names=["output"], opset_version=ONNX_OPSET,
                                      do_constant_folding=not remember)
                    onnx_model = buf.getvalue()
                else:
                    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"],
                                                output_names=["output"])
                    onnx_model = program.model_proto.SerializeToString()
            if check:
                _check_export(model, example, onnx_model, threads)
            if key is not None and not dynamo:
                _remember_graph(key, onnx_model, model)
            return onnx_model
        except Exception as e:  # the other exporter may still manage; both failing is reported below
            first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().split("\n")[0]  # no terminal colours
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(e).__name__}: {first}"[:300])
    raise ConfigError(f"runtime onnxruntime needs an ONNX export of the model, but torch.onnx.export failed "
                      f"({'; '.join(errors)}) (measure.runtime); time it with measure.runtime: torch")


def _remember_graph(key: tuple, onnx_model: bytes, model) -> None:
    """Keep ``onnx_model`` for ``key`` if every initializer is one of ``model``'s named tensors, each its own."""
    import onnx

    graph = onnx.load_from_string(onnx_model).graph
    names = {i.name for i in graph.initializer}
    if not names <= model.state_dict().keys():
        return
    if any(n.op_type == "Identity" and n.input and n.input[0] in names for n in graph.node):
        return  # one initializer stands for several equal tensors: another model's need not be equal
    if len(onnx_model) > ONNX_REMEMBERED_BYTES:
        return
    _ONNX[key] = onnx_model
    while sum(len(g) for g in _ONNX.values()) > ONNX_REMEMBERED_BYTES:
        _ONNX.popitem(last=False)


def _with_weights(onnx_model: bytes, model) -> bytes:
    """The remembered graph ``onnx_model`` with ``model``'s parameters and buffers as its initializers."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(onnx_model)
    state = model.state_dict()
    for init in proto.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(state[init.name].detach().cpu().numpy(), init.name))
    return proto.SerializeToString()


# the session the last successful export check ran in, kept for make_runner (see _checked_session)
_CHECKED: dict = {}


def _check_export(model, example, onnx_model: bytes, threads: int = 1) -> None:
    """Raise unless the exported graph gives the model's outputs on a *fresh* input: tracing records one
    path through the code, so a data-dependent forward would otherwise be timed as a different network.
    The session it ran in (``threads`` intra-op threads) is kept in :data:`_CHECKED` for ``onnx_model``."""
    import torch

    _CHECKED.clear()
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leave the caller's RNG where it was
        torch.manual_seed(0)
        x = torch.randn_like(example)
        want = model(x)
    if not isinstance(want, torch.Tensor):
        return  # several outputs: the export itself is the check
    device = "cpu" if example.device.type == "cpu" else str(example.device)
    sess = ort_session(onnx_model, threads=threads, device=device)
    got = sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy()})[0]
    want = want.detach().cpu().numpy()
    scale = float(abs(want).max()) or 1.0
    diff = float(abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= 1e-3 * scale + 1e-5:  # float32 kernels differ in summation order, not more
        raise ValueError(f"the exported graph's outputs differ from the model's (max abs difference {diff:.3g}, "
                         f"output scale {scale:.3g}, shapes {got.shape} and {want.shape})")
    _CHECKED.update(graph=onnx_model, threads=int(threads), device=device, session=sess)


def _checked_session(onnx_model: bytes, threads: int, device: str):
    """The session :func:`_check_export` last ran ``onnx_model`` in -- these very bytes (the object the
    export returned), with these threads on this device -- taken out of the cache; None otherwise.  A
    session's options are fixed when it is made, so such a session is the one :func:`ort_session` would
    make now, already loaded and optimised."""
    if _CHECKED.get("graph") is onnx_model and _CHECKED["threads"] == int(threads) and _CHECKED["device"] == device:
        sess = _CHECKED["session"]
        _CHECKED.clear()
        return sess
    return None


def ort_session(onnx_model: bytes, threads: int, device: str = "cpu"):
    """An ONNX Runtime session set up as a deployment would: ``threads`` intra-op threads, one inter-op
    thread, sequential execution, every graph optimisation (conv+BN and conv+activation fusion); pool
    threads do not spin (see below)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT's notes on unused initialisers are no news here
    # Idle pool threads sleep instead of spinning: a spinning pool steals the cores that concurrent trials
    # (and a loaded machine's other work) need; on a loaded 2-core machine, 2-thread VGG-16 ran at 18 ms
    # spinning against 8 ms not. The price on an idle machine is a thread wake-up per parallel operator.
    # One thread has no pool, so nothing changes there.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device.startswith("cuda"):
        dev_id = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(onnx_model, so, providers=providers)


@dataclass
class Runner:
    """One model ready to time on one runtime: ``run()`` is one forward, ``sync()`` waits for it."""

    run: Callable[[], object]
    sync: Callable[[], None]
    threads: int
    label: str
    cuda: bool = False  # timed with CUDA events (the GPU's own clock), not the host's


_KEPT_RUNNERS: OrderedDict = OrderedDict()  # kept_runner's: (key, settings) -> Runner, most recently used last
KEPT_RUNNERS = 2  # a worker process runs one sweep's trials at a time: its dense baseline, and room for a next


def kept_runner(key, model, input_shape, *, batch: int, threads: int, device: str = "cpu",
                runtime: str | None = None) -> Runner:
    """The runner of ``model`` kept in this process under ``key`` with these settings, made on first use: for a
    network timed again and again exactly as it is (the dense baseline each trial is timed beside).  ``key``
    must change whenever the network's weights or architecture do (:meth:`sweep.folder.SweepFolder.baseline_key`);
    ``model`` is only read (copied) when the runner is made, never moved or changed."""
    import torch

    runtime = resolve_runtime(runtime, device)
    threads = int(threads) if threads else torch.get_num_threads()
    full = (key, tuple(input_shape), batch, threads, device, runtime)
    if full in _KEPT_RUNNERS:
        _KEPT_RUNNERS.move_to_end(full)
        return _KEPT_RUNNERS[full]
    import copy

    # a copy of its own, on the device: an eager or compiled runner holds the module, and the caller's stays as it is
    model = copy.deepcopy(model).to(device).eval()
    with threads_kept():
        torch.set_num_threads(threads)
        runner = make_runner(model, input_shape, batch=batch, threads=threads, device=device, runtime=runtime)
    _KEPT_RUNNERS[full] = runner
    while len(_KEPT_RUNNERS) > KEPT_RUNNERS:
        _KEPT_RUNNERS.popitem(last=False)
    return runner


def make_runner(model, input_shape, *, batch: int, threads: int, device: str = "cpu", runtime: str = "torch",
                onnx_model: bytes | None = None, check: bool = True) -> Runner:
    """``model`` ready to time on ``runtime`` (a name of :data:`RUNTIMES`) on a random batch: exported and
    loaded into a session once for onnxruntime, wrapped by ``torch.compile`` for torch_compile. Run it
    under ``torch.inference_mode`` with torch's threads set (as :func:`measure_latency` does)."""
    import torch

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    x = torch.randn(batch, *input_shape, device=device)
    if runtime == "onnxruntime":
        model = model.to(device).eval()
        if onnx_model is None:
            onnx_model = export_onnx(model, x, check=check, remember=True, threads=threads)
        sess = _checked_session(onnx_model, threads, device) or ort_session(onnx_model, threads, device)
        # a host array: on CUDA each run includes its copy to the device, as serving from numpy does
        feed = {sess.get_inputs()[0].name: x.cpu().numpy()}
        return Runner(lambda: sess.run(None, feed), lambda: None, threads, runtime_label(runtime))
    model = model.to(device).eval()
    fn = torch.compile(model) if runtime == "torch_compile" else model
    return Runner(lambda: fn(x), sync, threads, runtime_label(runtime), cuda=cuda)


def time_runs(runner: Runner, *, warmup: int, repeats: int) -> list[float]:
    """``warmup`` untimed forwards of ``runner``, then the milliseconds of each of ``repeats`` timed ones
    (each waited for), all under one ``torch.inference_mode`` (entering it is not timed)."""
    import torch

    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            runner.run()
        runner.sync()
        if runner.cuda:  # kernels run asynchronously: events on the stream time the GPU work itself
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                runner.run()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            return times
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.run()
            runner.sync()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def fmt_speedup(x: float) -> str:
    """A speed-up (reference time / this time) as the report and the logs write it: ``812x``; ``3.25x`` under
    10; ``-`` when unknown."""
    if not math.isfinite(x) or x <= 0:
        return "-"
    return f"{x:.0f}x" if x >= 10 else f"{x:.3g}x"


def speed_words(speedup: float) -> str:
    """``speedup`` in words: "812x faster", "3.25x faster", "2.5x slower" (below 1), "of unknown speed"."""
    if not (math.isfinite(speedup) and speedup > 0):
        return "of unknown speed"
    return f"{fmt_speedup(speedup)} faster" if speedup >= 1 else f"{fmt_speedup(1 / speedup)} slower"


def device_label(device: str) -> str:
    """The device as recorded with a latency: ``cpu``, or ``cuda:0 (NVIDIA H200)`` -- the index Ray assigned
    this worker (CUDA_VISIBLE_DEVICES) and the GPU's name."""
    import torch

    if not device.startswith("cuda"):
        return device
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def _stats(times: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def measure_latency(model, input_shape, *, batch: int = 1, warmup: int = 10, repeats: int = 50,
                    threads: int | None = None, device: str = "cpu", runtime: str | None = None,
                    onnx_model: bytes | None = None) -> Latency:
    """Median and IQR of the forward time of ``model`` on a random batch, on ``runtime`` (None: the
    default of ``device``, :func:`default_runtime`). ``threads`` (default: torch's current count) are
    torch's intra-op threads, or ORT's ``intra_op_num_threads``. ``onnx_model`` (bytes of
    :func:`export_onnx` at this batch) skips the export on onnxruntime."""
    import torch

    runtime = resolve_runtime(runtime, device)
    threads = int(threads) if threads else torch.get_num_threads()
    with threads_kept():
        torch.set_num_threads(threads)
        r = make_runner(model, input_shape, batch=batch, threads=threads, device=device, runtime=runtime,
                        onnx_model=onnx_model)
        # torch.compile compiles on the first call: at least one warm-up call, never timed
        times = time_runs(r, warmup=max(warmup, 1) if runtime == "torch_compile" else warmup, repeats=repeats)
    med, iqr = _stats(times)
    return Latency(median_ms=med, iqr_ms=iqr, batch=batch, repeats=repeats, threads=r.threads,
                   device=device_label(device), runtime=r.label)


def compare_latency(models, input_shape, *, batch: int = 1, warmup: int = 10, repeats: int = 50,
                    threads: int | None = None, device: str = "cpu", rounds: int = 5,
                    runtime: str | None = None) -> list[Latency]:
    """Latency of several models measured side by side on one runtime: their timed runs are interleaved
    in ``rounds`` rounds (A, B, A, B, ...), so drift and load changes on the machine hit all of them
    alike and their ratio is honest even when each figure alone is noisy.  A :class:`Runner` among
    ``models`` (made with the same settings: :func:`kept_runner`) is timed as it is."""
    import torch

    runtime = resolve_runtime(runtime, device)
    threads = int(threads) if threads else torch.get_num_threads()
    with threads_kept():
        torch.set_num_threads(threads)
        runners = [m if isinstance(m, Runner) else
                   make_runner(m, input_shape, batch=batch, threads=threads, device=device, runtime=runtime)
                   for m in models]
        times: list[list[float]] = [[] for _ in runners]
        per_round = max(1, repeats // rounds)
        with torch.inference_mode():
            for r in runners:
                for _ in range(max(warmup, 1) if runtime == "torch_compile" else warmup):
                    r.run()
                r.sync()
            for _ in range(rounds):
                for i, r in enumerate(runners):
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        r.run()
                        r.sync()
                        times[i].append((time.perf_counter() - t0) * 1e3)
        out = []
        for r, t in zip(runners, times):
            med, iqr = _stats(t)
            out.append(Latency(median_ms=med, iqr_ms=iqr, batch=batch, repeats=len(t), threads=r.threads,
                               device=device_label(device), runtime=r.label))
        return out


def check_device_here(device: str, where: str) -> None:
    """The device latencies are timed on must exist on this machine: a sweep asking for ``cuda`` on a machine
    without one would train its baseline, then fail at its first measurement."""
    import torch

    from .errors import ConfigError

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise ConfigError(f"device must be one this machine has ({count} CUDA device(s)), but got "
                              f"device={device!r} ({where}); use cpu here, or run where the GPU is")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device must be one this machine has (no MPS here), but got device={device!r} ({where}); "
                          f"use cpu here")
