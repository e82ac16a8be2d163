"""Model zoo: registered builders, torchvision models and user builders behind one :func:`build_model`.

A model name is one of
- a registered name (:data:`MODELS`, e.g. ``cifar_resnet56``),
- ``torchvision:<name>`` for a torchvision classification model, always built without pretrained weights,
- ``package.module:function`` for a user builder, called with the subset of ``num_classes, in_channels,
  input_size`` its signature accepts.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import typing
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import ConfigError, RegistryError
from ..registry import Registry
from .cifar_resnet import cifar_resnet20, cifar_resnet56, cifar_resnet110
from .mlp import mlp
from .small_cnn import small_cnn
from .vgg import vgg16_bn
from .yolo_style import yolo7_cls

__all__ = ["MODELS", "build_model", "model_names"]

Builder = Callable[[int, int, int], nn.Module]

MODELS: Registry[Builder] = Registry("model")
MODELS.add("small_cnn", small_cnn)
MODELS.add("cifar_resnet20", cifar_resnet20)
MODELS.add("cifar_resnet56", cifar_resnet56)
MODELS.add("cifar_resnet110", cifar_resnet110)
MODELS.add("vgg16_bn", vgg16_bn)
MODELS.add("yolo7_cls", yolo7_cls)
MODELS.add("mlp", mlp)

TORCHVISION_PATTERN = "torchvision:<name>"
USER_PATTERN = "package.module:function"
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_MAX_LISTED = 5  # offending keys shown in a checkpoint error


def model_names() -> list[str]:
    """Registered names, then the two name patterns."""
    return MODELS.names() + [TORCHVISION_PATTERN, USER_PATTERN]


def _loc(where: str, field: str) -> str:
    return f" ({where}.{field})" if where else ""


def _check_int(name: str, value: Any, minimum: int, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, but got {name}={value!r}{_loc(where, name)}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, but got {name}={value!r}{_loc(where, name)}")


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    checkpoint: str | os.PathLike | None = None,
    where: str = "",
) -> nn.Module:
    """Build model ``name`` (see the module docstring), optionally loading a state dict from ``checkpoint``.

    ``where`` locates the model section in the config (e.g. ``"quick.yaml: model"``); errors append the field.
    """
    _check_int("num_classes", num_classes, 2, where)
    _check_int("in_channels", in_channels, 1, where)
    _check_int("input_size", input_size, 1, where)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a non-empty string, but got name={name!r}{_loc(where, 'name')}")

    if name.startswith("torchvision:"):
        model = _torchvision_model(name.split(":", 1)[1], num_classes, in_channels, input_size, where)
    elif ":" in name:
        model = _user_model(name, num_classes, in_channels, input_size, where)
    else:
        try:
            builder = MODELS.get(name, where=f"{where}.name" if where else "")
        except RegistryError as e:
            raise RegistryError(f"{e}, {TORCHVISION_PATTERN}, {USER_PATTERN}") from None
        model = builder(num_classes, in_channels, input_size)

    if checkpoint is not None:
        load_checkpoint(model, checkpoint, where=where)
    return model


# --- torchvision ---------------------------------------------------------------------------------------------


def _torchvision_model(tv_name: str, num_classes: int, in_channels: int, input_size: int, where: str) -> nn.Module:
    import torchvision

    valid = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if tv_name not in valid:
        some = ", ".join(n for n in ("resnet18", "resnet50", "mobilenet_v2", "densenet121", "googlenet", "vgg16_bn")
                         if n in valid)
        raise RegistryError(
            f"torchvision model must be a torchvision classification model, but got {tv_name!r}"
            f"{_loc(where, 'name')}; e.g. {some} (see torchvision.models.list_models())"
        )
    builder = torchvision.models.get_model_builder(tv_name)
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    # Builders take **kwargs and forward them to the model class; read the class from the return annotation
    # to pass the options that only some models have (googlenet/inception: no aux heads, explicit init).
    accepted = _model_class_params(builder)
    for key, value in (("aux_logits", False), ("init_weights", True), ("image_size", input_size)):
        if key in accepted:
            kwargs[key] = value
    try:
        model = builder(**kwargs)
    except Exception as e:  # e.g. a ViT whose image_size is not a multiple of its patch size
        raise ConfigError(
            f"torchvision model must build with these settings, but torchvision:{tv_name} with {kwargs} "
            f"raised {type(e).__name__}: {e}{_loc(where, 'name')}"
        ) from e
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _model_class_params(builder: Callable) -> set[str]:
    try:
        cls = typing.get_type_hints(builder).get("return")
        return set(inspect.signature(cls.__init__).parameters) if isinstance(cls, type) else set()
    except Exception:  # unresolvable annotation: fall back to the defaults of the builder
        return set()


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, stride=child.stride, padding=child.padding,
                    dilation=child.dilation,
                    # Depthwise-style first convs (groups == in) cannot keep their groups with a new input width.
                    groups=child.groups if in_channels % child.groups == 0 else 1,
                    bias=child.bias is not None, padding_mode=child.padding_mode,
                )
                setattr(parent, child_name, new)
                return


# --- user builders -------------------------------------------------------------------------------------------


def _user_model(name: str, num_classes: int, in_channels: int, input_size: int, where: str) -> nn.Module:
    loc = _loc(where, "name")
    module_path, _, func_name = name.partition(":")
    if not _DOTTED.match(module_path) or not func_name.isidentifier():
        raise ConfigError(
            f"model name must be a registered name, {TORCHVISION_PATTERN} or {USER_PATTERN}, but got {name!r}{loc}"
        )
    try:
        module = importlib.import_module(module_path)
    except Exception as e:
        raise ConfigError(
            f"model builder module must be importable, but importing {module_path!r} for model={name!r} "
            f"raised {type(e).__name__}: {e}{loc}"
        ) from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"model builder must be a function in {module_path}, but got model={name!r}{loc}")

    offered = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = offered
    else:
        kwargs = {k: v for k, v in offered.items() if k in params}
    try:
        model = fn(**kwargs)
    except Exception as e:
        raise ConfigError(
            f"model builder must build a model, but model={name!r} called with {kwargs} "
            f"raised {type(e).__name__}: {e}{loc}"
        ) from e
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model builder must return a torch.nn.Module, but model={name!r} returned {type(model).__name__}{loc}"
        )
    return model


# --- checkpoints ---------------------------------------------------------------------------------------------


def load_checkpoint(model: nn.Module, path: str | os.PathLike, where: str = "") -> nn.Module:
    """Load a state dict (bare, or under a ``state_dict``/``model`` key) into ``model`` strictly."""
    loc = _loc(where, "checkpoint")
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint not found: checkpoint={str(path)!r}{loc}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"checkpoint must be a state dict saved with torch.save, but loading checkpoint={str(path)!r} "
            f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{loc}"
        ) from e
    state = _state_dict_of(obj)
    if state is None:
        raise ConfigError(
            f"checkpoint must hold a state dict (bare or under 'state_dict' or 'model'), "
            f"but got checkpoint={str(path)!r}{loc}"
        )
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise ConfigError(
            f"checkpoint must match the model's parameters, but checkpoint={str(path)!r} has "
            f"{'; '.join(problems)}{loc}"
        )
    model.load_state_dict(state)
    return model


def _state_dict_of(obj: Any) -> Mapping[str, torch.Tensor] | None:
    def is_state(d: Any) -> bool:
        return isinstance(d, Mapping) and len(d) > 0 and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items()
        )

    if is_state(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if is_state(obj.get(key)):
                return obj[key]
    return None


def _mismatches(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> list[str]:
    def first(keys: list[str]) -> str:
        more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
        return ", ".join(keys[:_MAX_LISTED]) + more

    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k} {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in got and got[k].shape != expected[k].shape
    ]
    out = []
    if missing:
        out.append(f"missing keys {first(missing)}")
    if unexpected:
        out.append(f"unexpected keys {first(unexpected)}")
    if shapes:
        out.append(f"shape mismatches {first(shapes)}")
    return out
