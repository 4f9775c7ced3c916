"""All-or-nothing publication of a set of output files, a lock per output folder, and the
rules that protect the source.

Layout of an output folder ``OUT`` that holds an export::

    OUT/SC_0001.dcm -> .medhdm-current/SC_0001.dcm     (one relative link per file of the set)
    OUT/medhdm-export.json -> .medhdm-current/medhdm-export.json
    OUT/.medhdm-current -> .medhdm-sets/<id>          (the one switch: which set is visible)
    OUT/.medhdm-sets/<id>/                            (a complete set: its files and its manifest)

A run takes an exclusive ``flock`` on ``OUT`` itself (so there is no lock file to leave
behind or delete); a second run into the same folder fails at once with
:class:`OutputBusyError`. Under the lock it

1. recovers what an interrupted run left (:meth:`ExportFolder.recover`): removes
   ``.medhdm-staging-*`` folders, sets that are not current and links that point at no
   file, then adds the links the current set is missing (``medhdm-export.json`` last);
   nothing else is ever deleted or created,
2. refuses a folder that already holds an export unless ``overwrite``, and any file of
   the new set's names that is not one of these links, always,
3. writes every file into ``OUT/.medhdm-staging-<pid>-<random>/``, then the manifest
   (names, sizes, SHA-256) last, and fsyncs them,
4. renames the staging folder into ``.medhdm-sets/`` (one rename of a directory: a set
   there is always complete),
5. when the new set's names differ from the old set's: removes the link
   ``medhdm-export.json``, then the links of names the new set does not have (they still
   show the old set until they go),
6. swaps ``.medhdm-current`` to the new set with one atomic rename of a symlink: the
   commit point. Every link that exists shows the old set before it and the new set after it,
7. adds the links of names the old set did not have (into the new, complete set), then
   ``medhdm-export.json`` last,
8. removes the old set.

A link is made only while the set it points into is current and complete, and removed
while that set is still current, so no link in ``OUT`` ever dangles, not even for an instant; and
every link goes through ``.medhdm-current``, so the files visible at any moment belong to
one set, never to two. A run killed at any moment leaves, besides leftovers of the kinds
in 1:

- the complete old set (or nothing), or the complete new set: whenever
  ``OUT/medhdm-export.json`` is visible, the visible names are exactly the ones it lists;
- or, killed in steps 5 to 7 of a run whose names differ from the old set's, a part of
  the old or of the new set without ``medhdm-export.json``, which the next run into the
  folder completes (step 1) before anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from ..io.atomic import LockedFolder, OutputBusyError, fsync

__all__ = [
    "CURRENT",
    "MANIFEST",
    "SETS",
    "STAGING_PREFIX",
    "ExportFolder",
    "OutputBusyError",
    "OutputExistsError",
    "read_manifest",
    "write_all",
]

CURRENT = ".medhdm-current"
SETS = ".medhdm-sets"
STAGING_PREFIX = ".medhdm-staging-"
MANIFEST = "medhdm-export.json"
_MANIFEST_FORMAT = "medhdm-export/1"


class OutputExistsError(ValueError):
    """The output folder already holds outputs, and overwriting was not asked for."""


def _checkpoint(step: str) -> None:
    """Called after each publication step (``"staged <k>"``, ``"manifest"``, ``"set"``,
    ``"unlinked <k>"``, ``"swapped"``, ``"linked <k>"``, ``"done"``); does nothing. Tests
    replace it in a child process to interrupt a run at a chosen moment."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_name(name: str) -> None:
    if (
        not name
        or name != os.path.basename(name)
        or name.startswith(".")
        or name in (MANIFEST,)
        or "\x00" in name
        or os.sep in name
        or (os.altsep and os.altsep in name)
    ):
        raise ValueError(f"output name {name!r}: expected a plain file name inside the output folder")


def read_manifest(set_dir: str | os.PathLike) -> dict:
    """The manifest of a published set folder (``{"files": {name: {"sha256", "bytes"}}, ...}``)."""
    with open(Path(set_dir) / MANIFEST) as f:
        manifest = json.load(f)
    if manifest.get("format") != _MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{Path(set_dir) / MANIFEST}: not a medhdm export manifest")
    return manifest


class ExportFolder:
    """An output folder, locked for one run (a context manager; see the module docstring).

    Args:
        out_dir: the output folder (created if missing, removed again if this run created
            it and leaves it empty).
        overwrite: replace an export the folder already holds.
    """

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False) -> None:
        self.out = Path(out_dir)
        self.overwrite = bool(overwrite)
        self._lock = LockedFolder(self.out, what="out")
        self._fd: int | None = None
        self._staging: Path | None = None

    # -- lock -------------------------------------------------------------------------
    def __enter__(self) -> ExportFolder:  # noqa: PYI034
        self._lock.__enter__()
        self._fd = self._lock.fd
        try:
            self.recover()
            if not self.overwrite and self.current_set() is not None:
                raise OutputExistsError(
                    f"out: {self.out} already holds a medhdm export ({self.out / MANIFEST}); "
                    "pass overwrite=True to replace it, or choose another folder"
                )
        except BaseException:
            self._release(failed=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._release(failed=exc_type is not None)

    def _release(self, failed: bool) -> None:
        try:
            if failed and self._fd is not None:
                try:
                    self.recover()
                except (OSError, ValueError):
                    pass  # the run's own error is the one to report; the next run recovers again
        finally:
            self._lock.release(failed)
            self._fd = None

    # -- state ------------------------------------------------------------------------
    def current_set(self) -> Path | None:
        """The folder of the visible set, or ``None``."""
        link = self.out / CURRENT
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        folder = self.out / target
        if Path(target).parent != Path(SETS) or not (folder / MANIFEST).is_file():
            return None
        return folder

    def _is_our_link(self, path: Path) -> bool:
        return path.is_symlink() and os.readlink(path) == f"{CURRENT}/{path.name}"

    def _link(self, name: str) -> None:
        """Add the link ``OUT/name -> .medhdm-current/name`` (kept if it is already there)."""
        target = self.out / name
        try:
            os.symlink(f"{CURRENT}/{name}", target)
        except FileExistsError:
            if not self._is_our_link(target):
                raise OutputExistsError(
                    f"out: {target} appeared during the run and is not part of a medhdm export; remove it and run again"
                ) from None

    def recover(self) -> None:
        """Finish what an interrupted run of this kind left (needs the lock).

        Removes ``.medhdm-staging-*`` folders, temporary switches, sets that are not current
        and links that point at no file; then adds the links of the current set's files that
        are missing, ``medhdm-export.json`` last (and only once every name of the set is a
        link). Nothing else is removed, and no existing name is replaced.
        """
        assert self._fd is not None, "recover() needs the folder's lock"
        current = self.current_set()
        if (self.out / CURRENT).is_symlink() and current is None:
            (self.out / CURRENT).unlink()  # points at no complete set: nothing is visible anyway
        for entry in list(os.scandir(self.out)):
            path = Path(entry.path)
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            elif entry.name.startswith(f"{CURRENT}.tmp-") and entry.is_symlink():
                path.unlink()
            elif self._is_our_link(path) and not path.exists():
                path.unlink()  # a link to a file the current set does not have
        sets = self.out / SETS
        if sets.is_dir() and not sets.is_symlink():
            for entry in list(os.scandir(sets)):
                if current is None or entry.name != current.name:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
            if current is None:
                try:
                    sets.rmdir()
                except OSError:
                    pass
        fsync(self.out)
        if current is not None:
            names = sorted(read_manifest(current)["files"])
            for name in names:
                _check_name(name)
            for name in names:
                if not (self.out / name).is_symlink() and not (self.out / name).exists():
                    self._link(name)
            fsync(self.out)
            if all(self._is_our_link(self.out / name) for name in names) and not (self.out / MANIFEST).exists():
                self._link(MANIFEST)
                fsync(self.out)

    # -- publication ------------------------------------------------------------------
    def _check_targets(self, names: Sequence[str], protected: Sequence[Path | None]) -> Path | None:
        """Refuse bad names, source files and files medhdm did not write; return the current set (if any)."""
        for name in names:
            _check_name(name)
        if len(set(names)) != len(names):
            raise ValueError("two outputs would get the same file name")
        protected_resolved = {Path(p).resolve() for p in protected if p is not None}
        for name in [*names, MANIFEST]:
            target = self.out / name
            if target.resolve() in protected_resolved:
                raise ValueError(f"{target}: refusing to overwrite a source file")
            if (target.exists() or target.is_symlink()) and not self._is_our_link(target):
                raise OutputExistsError(
                    f"out: {target} exists and is not part of a medhdm export; remove it or choose another folder"
                )
        old = self.current_set()
        if old is not None and not self.overwrite:
            raise OutputExistsError(f"out: {self.out} already holds a medhdm export; pass overwrite=True")
        return old

    def _stage(self, writers: Sequence[tuple[str, Callable[[str], None]]], note: dict | None) -> Path:
        """Write every file, then the manifest last, into a new staging folder (fsynced); return the folder."""
        staging = Path(os.path.join(self.out, f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"))
        staging.mkdir()
        self._staging = staging
        files = {}
        for k, (name, write) in enumerate(writers, start=1):
            staged = staging / name
            write(str(staged))
            if not staged.is_file():
                raise ValueError(f"{name}: the writer produced no file")
            os.chmod(staged, 0o644)
            fsync(staged)
            files[name] = {"sha256": _sha256(staged), "bytes": staged.stat().st_size}
            _checkpoint(f"staged {k}")
        manifest = {
            "format": _MANIFEST_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files,
            **(note or {}),
        }
        tmp = staging / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(tmp, 0o644)
        fsync(tmp)
        os.replace(tmp, staging / MANIFEST)  # written last: it marks the set complete
        fsync(staging)
        _checkpoint("manifest")
        return staging

    def publish(
        self,
        writers: Sequence[tuple[str, Callable[[str], None]]],
        protected: Sequence[Path | None] = (),
        note: dict | None = None,
    ) -> list[Path]:
        """Write every ``(file name, writer)`` pair as the folder's new set, all or nothing.

        Returns:
            the paths of the written files in ``out`` (links into the set), in the order given.
        """
        assert self._fd is not None, "publish() needs the folder's lock"
        out = self.out
        names = [name for name, _ in writers]
        old = self._check_targets(names, protected)
        old_names = set(read_manifest(old)["files"]) if old is not None else set()
        staging = self._stage(writers, note)

        sets = out / SETS
        sets.mkdir(exist_ok=True)
        set_dir = sets / staging.name[len(STAGING_PREFIX) :]
        os.rename(staging, set_dir)  # a complete set appears at once
        self._staging = None
        fsync(sets)
        _checkpoint("set")
        if old is not None and old_names != set(names):
            # the visible names are about to differ from the manifest's: it goes first; then the
            # names the new set lacks, while they still show the old set (after the swap they would dangle)
            for k, name in enumerate([MANIFEST, *sorted(old_names - set(names))], start=1):
                if self._is_our_link(out / name):
                    (out / name).unlink()
                _checkpoint(f"unlinked {k}")
            fsync(out)
        tmp_current = out / f"{CURRENT}.tmp-{secrets.token_hex(6)}"
        os.symlink(f"{SETS}/{set_dir.name}", tmp_current)
        os.replace(tmp_current, out / CURRENT)  # the commit point
        fsync(out)
        _checkpoint("swapped")
        # names the old set lacked, now that they point into the complete current set; the manifest last
        added = [name for name in names if not self._is_our_link(out / name)]
        if not self._is_our_link(out / MANIFEST):
            added.append(MANIFEST)
        for k, name in enumerate(added, start=1):
            if name == MANIFEST:
                fsync(out)  # every other link is on disk before the manifest shows
            self._link(name)
            _checkpoint(f"linked {k}")
        fsync(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _checkpoint("done")
        return [out / name for name in names]


def write_all(
    out_dir: str | os.PathLike,
    writers: Sequence[tuple[str, Callable[[str], None]]],
    protected: Sequence[Path | None] = (),
    overwrite: bool = False,
) -> list[Path]:
    """Write every ``(file name, writer)`` pair into ``out_dir`` as one set, all or nothing.

    Args:
        out_dir: the output folder (created if missing).
        writers: plain file names and functions that write a given path.
        protected: files that must never be replaced (the source images).
        overwrite: replace an export the folder already holds.

    Returns:
        the written paths, in the order given.
    """
    with ExportFolder(out_dir, overwrite=overwrite) as folder:
        return folder.publish(writers, protected)
