"""All-or-nothing writing of a set of output files, and the rules that protect the source.

Files are written into a hidden temporary folder inside the output folder and renamed
into place only after every one of them was written; on any failure the temporary
folder (and the output folder, if this call created it) is removed, so a failed export
leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["check_output_folder", "write_all"]


def check_output_folder(out_dir: Path, source_paths: Sequence[Path | None], allow_inside_source: bool = False) -> None:
    """Refuse an output folder inside (or equal to) a folder that holds source files.

    Raises:
        ValueError: naming the source folder, unless ``allow_inside_source``.
    """
    out = Path(out_dir).resolve()
    folders = {Path(p).resolve().parent for p in source_paths if p is not None}
    for folder in sorted(folders):
        if not allow_inside_source and (out == folder or folder in out.parents):
            raise ValueError(f"out: {out} is inside the source folder {folder}; choose another folder "
                             "or pass allow_inside_source=True (--allow-inside-source)")


def write_all(
    out_dir: str | os.PathLike,
    writers: Sequence[tuple[str, Callable[[str], None]]],
    protected: Sequence[Path | None] = (),
) -> list[Path]:
    """Write every ``(file name, writer)`` pair into ``out_dir``, all or nothing.

    Args:
        out_dir: the output folder (created if missing).
        writers: file names relative to ``out_dir`` and functions that write a given path.
        protected: files that must never be replaced (the source images).

    Returns:
        the written paths, in the order given.
    """
    out = Path(out_dir)
    names = [name for name, _ in writers]
    if len(set(names)) != len(names):
        raise ValueError("two outputs would get the same file name")
    targets = [out / name for name in names]
    protected_resolved = {Path(p).resolve() for p in protected if p is not None}
    for target in targets:
        if target.resolve() in protected_resolved:
            raise ValueError(f"{target}: refusing to overwrite a source file")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out: cannot create {out} ({err.strerror or err})") from None
    try:
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".medhdm-export-"))
    except OSError as err:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise ValueError(f"out: cannot write into {out} ({err.strerror or err})") from None
    try:
        for (name, write), target in zip(writers, targets):
            staged = staging / name
            staged.parent.mkdir(parents=True, exist_ok=True)
            write(str(staged))
            os.chmod(staged, 0o644)
        for (name, _), target in zip(writers, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return targets
