"""Method registry. Importing this package registers every built-in method."""

from .base import METHODS, Knob, MethodConfig, MethodSpec, PruneContext, PruneResult, register_method

# built-in methods register themselves on import
from . import magnitude  # noqa: F401,E402
from . import sr_init  # noqa: F401,E402
from . import lnpt  # noqa: F401,E402
from . import iterative  # noqa: F401,E402
from . import cat  # noqa: F401,E402


def get_method(name: str, where: str = "") -> MethodSpec:
    return METHODS.get(name, where)


def method_names() -> list[str]:
    return METHODS.names()


__all__ = ["METHODS", "Knob", "MethodConfig", "MethodSpec", "PruneContext", "PruneResult",
           "register_method", "get_method", "method_names"]
