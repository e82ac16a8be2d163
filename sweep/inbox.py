"""The model inbox: where trials leave their pruned models (bytes) until the driver takes them.

Convention: a plain class with nothing but the standard library, so that the process Ray starts for it
imports this module alone (not torch); :func:`sweep.driver._model_inbox` makes it a Ray actor on the
driver's node.  Models travel through Ray, not a shared disk.
"""

from __future__ import annotations


class ModelInbox:
    """Model bytes by their path in the sweep folder (``models/<trial>.pt``)."""

    def __init__(self):
        self.models: dict[str, bytes] = {}

    def put(self, rel: str, data: bytes) -> None:
        self.models[rel] = data

    def take(self, rel: str) -> bytes | None:
        return self.models.pop(rel, None)
