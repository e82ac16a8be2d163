"""Method registry. Importing this package registers every built-in method."""

# built-in methods register themselves on import
from . import (
    cat,  # noqa: F401,E402
    iterative,  # noqa: F401,E402
    lnpt,  # noqa: F401,E402
    magnitude,  # noqa: F401,E402
    sr_init,  # noqa: F401,E402
)
from .base import METHODS, Knob, MethodConfig, MethodSpec, PruneContext, PruneResult, register_method


def get_method(name: str, where: str = "") -> MethodSpec:
    return METHODS.get(name, where)


def method_names() -> list[str]:
    return METHODS.names()


def flag_knobs() -> dict[str, list[tuple[str, Knob]]]:
    """Knobs that are also `sweep prune` options (``Knob.flag``): name -> [(method, knob), ...]."""
    out: dict[str, list[tuple[str, Knob]]] = {}
    for name, spec in METHODS.items():
        for k in spec.knobs:
            if k.flag:
                out.setdefault(k.name, []).append((name, k))
    return out


__all__ = ["METHODS", "Knob", "MethodConfig", "MethodSpec", "PruneContext", "PruneResult",
           "register_method", "get_method", "method_names", "flag_knobs"]
