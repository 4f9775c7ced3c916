"""Safe writing: atomic file writes (a temporary name in the target folder, then a rename), and a
lock per output folder, so that two runs never write into one folder at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["TMP_PREFIX", "LockedFolder", "OutputBusyError", "atomic_write", "fsync", "remove_stale_temporaries"]

#: the prefix of :func:`atomic_write`'s temporary files (left behind only by a killed process)
TMP_PREFIX = ".tmp-"


class OutputBusyError(ValueError):
    """The output folder is locked by another run."""


class LockedFolder:
    """An output folder created if needed and locked (``flock``) by this process, as a context manager.

    The lock is taken on the folder itself, so there is no lock file to leave behind; a
    second process fails at once with :class:`OutputBusyError` naming the folder. On a
    failed exit (an exception inside the ``with``), the folders this run created are
    removed again if they are empty.

    Args:
        path: the folder.
        what: how error messages name it (``"out"``, ``"--out"``).
    """

    def __init__(self, path: str | os.PathLike, what: str = "out") -> None:
        self.path = Path(path)
        self.what = what
        self.fd: int | None = None
        self.created: list[Path] = []

    def __enter__(self) -> LockedFolder:
        out = self.path
        for _ in range(3):
            if out.exists() and not out.is_dir():
                raise ValueError(f"{self.what}: {out} exists and is not a folder")
            missing = [p for p in [out, *out.parents] if not p.exists()]
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ValueError(f"{self.what}: cannot create {out} ({err.strerror or err})") from None
            self.created = [p for p in missing if p.is_dir()]
            try:
                fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as err:
                raise ValueError(f"{self.what}: cannot open {out} ({err.strerror or err})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputBusyError(
                        f"{self.what}: {out} is locked: another medhdm run is writing into it; "
                        "wait for it to finish or choose another folder"
                    ) from None
                raise ValueError(f"{self.what}: cannot lock {out} ({err.strerror or err})") from None
            try:
                same = os.stat(out).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                break
            os.close(fd)  # the folder was removed or replaced between mkdir and flock: try again
        else:
            raise OutputBusyError(f"{self.what}: {out} keeps being removed or replaced by another process")
        if not os.access(out, os.W_OK | os.X_OK):
            self.release(failed=True)
            raise ValueError(f"{self.what}: cannot write into {out} (permission denied)")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(failed=exc_type is not None)

    def release(self, failed: bool) -> None:
        """Unlock; after a failure, also remove the folders this run created if they are empty."""
        try:
            if failed and self.fd is not None:
                for folder in self.created:  # only folders this run made, only if empty
                    try:
                        folder.rmdir()
                    except OSError:
                        break
        finally:
            if self.fd is not None:
                os.close(self.fd)  # releases the flock
                self.fd = None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove :func:`atomic_write`'s temporary files in ``folder`` (left by a killed run); hold its lock first."""
    removed = []
    for path in Path(folder).glob(f"{TMP_PREFIX}*"):
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


def fsync(path: str | os.PathLike) -> None:
    """Flush ``path`` to disk: a file's bytes, or a folder's entries (a new, renamed or removed name in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[str], None]) -> None:
    """Write ``path`` atomically: either all of it appears or nothing does.

    ``data`` is the file's bytes, or a function that writes a given temporary path
    (for example ``lambda tmp: torch.save(obj, tmp)``). The temporary file lives in the
    same folder, so the final ``os.replace`` is a rename on one file system; it is
    removed if writing fails. The file gets the usual 0o644 permissions.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=f"-{path.name}")  # keeps the suffix
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        os.chmod(tmp, 0o644)
        fsync(tmp)  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
