"""The one rule for where outputs may go, used by ``explain``, ``evaluate``, ``export`` and the export API.

A source is what a reader takes: a file (a DICOM image, an enhanced multi-frame file, a NIfTI
volume) or a series folder, which :func:`medhdm.io.read_dicom` reads whole (every file in it).

- The output folder may not be a file, and may not be a source.
- It may not lie inside a source series folder: the reader would take the outputs as part of
  the series on the next run (unless the caller allows it explicitly).
- Beside a single source file (its own folder, a subfolder or a sibling of it) is allowed; the
  export staging refuses to overwrite a source file (``protected`` in
  :meth:`medhdm.export.staging.ExportFolder.publish`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_output_folder"]


def check_output_folder(
    out_dir: str | os.PathLike,
    sources: Iterable[str | os.PathLike | None],
    allow_inside_source: bool | None = None,
) -> Path:
    """``out_dir`` as given, after checking it against ``sources`` (see the module docstring).

    Args:
        out_dir: the output folder (need not exist yet).
        sources: the sources as the reader takes them: files and series folders (``None``: a
            dataset given in memory, ignored).
        allow_inside_source: ``True`` allows ``out_dir`` inside a source series folder;
            ``False`` refuses it and says how to allow it; ``None`` (callers without that
            option) refuses it.

    Raises:
        ValueError: starting ``out_dir:``, naming the output folder and the source.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir: {out} is a file, not a folder")
    resolved = out.resolve()
    for source in sources:
        if source is None:
            continue
        path = Path(source).resolve()
        if resolved == path:
            raise ValueError(f"out_dir: {out} is the source {source}; write the outputs elsewhere")
        if path.is_dir() and path in resolved.parents and not allow_inside_source:
            hint = " or pass allow_inside_source=True" if allow_inside_source is False else ""
            raise ValueError(
                f"out_dir: {out} lies inside the source series folder {source}, which is read whole "
                f"(the outputs would join the series); write the outputs elsewhere{hint}"
            )
    return out
