"""Files that last: written whole or not at all, and still there after a power cut.

Convention: the standard library alone, so that any process (the model inbox's included) can write a sweep's
files without importing torch or pyarrow.  A write goes to a temporary file beside its target, is fsynced,
renamed over the target, and the folder is fsynced: readers see the old bytes or the new ones, never a part.
A :class:`FileSlot` is one such file holding bytes that may come and go (a training's state after each epoch).
"""

from __future__ import annotations

import os
from pathlib import Path


def durable_write(path: Path, data: bytes) -> None:
    """``data`` at ``path``: temporary file, fsync, rename over ``path``, fsync of the folder -- all or
    nothing, and it lasts."""
    durably(Path(path), lambda tmp: tmp.write_bytes(data))


def durable_rename(src: Path, dst: Path) -> None:
    """``src`` (a complete file) becomes ``dst``: fsync of the file, rename over ``dst``, fsync of the folder."""
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    dfd = os.open(Path(dst).parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def durably(path: Path, write) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``, which then becomes ``path`` (:func:`durable_rename`)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    durable_rename(tmp, path)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (the holder of a sweep folder's lock, the maker of a
    half-written file)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class FileSlot:
    """Bytes kept in one file at ``path``, written durably; its folder is made when first written and removed
    when the last slot in it is.  ``stamp()`` changes whenever the bytes do (None: nothing there), so that a
    reader can tell whether what it read before is still what lies there."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def stamp(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, data: bytes) -> None:
        for attempt in range(3):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                durable_write(self.path, data)
                return
            except FileNotFoundError:  # the folder's last other slot was removed (and the folder) meanwhile
                if attempt == 2:
                    raise

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # holds other files, or is gone
            pass
