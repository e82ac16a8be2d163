"""The model inbox: where trials leave their pruned models (bytes) until the driver takes them, and keep
their fine-tune state after each epoch in the sweep folder.

Convention: a plain class with nothing but the standard library and :mod:`sweep.folder` (which imports
nothing else at its top), so that the process Ray starts for it imports neither torch nor pyarrow;
:func:`sweep.driver._model_inbox` makes it a Ray actor on the driver's node.  Models and progress travel
through Ray, not a shared disk: a trial on any node reaches the driver's folder through this actor.
"""

from __future__ import annotations


class ModelInbox:
    """Model bytes by their path in the sweep folder (``models/<trial>.pt``); fine-tune states by their
    configuration's name in ``progress_dir`` (the sweep folder's ``progress/``, written durably there, so
    that they outlive the driver)."""

    def __init__(self, progress_dir: str | None = None):
        self.models: dict[str, bytes] = {}
        self.progress_dir = progress_dir

    def put(self, rel: str, data: bytes) -> None:
        self.models[rel] = data

    def take(self, rel: str) -> bytes | None:
        return self.models.pop(rel, None)

    def _slot(self, name: str):
        from .folder import progress_slot

        if self.progress_dir is None:
            raise RuntimeError("this inbox keeps no progress (no progress folder given)")
        return progress_slot(self.progress_dir, name)

    def progress(self, name: str) -> bytes | None:
        return self._slot(name).read()

    def keep_progress(self, name: str, data: bytes) -> None:
        self._slot(name).write(data)

    def drop_progress(self, name: str) -> None:
        self._slot(name).remove()
