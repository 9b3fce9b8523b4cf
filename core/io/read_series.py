"""Every series of an upload or of files on disk: zips expanded, each file routed to the reader that accepts it.

The dispatcher over the series readers (the MONAI ``ImageReader`` pattern; readers derive from
:class:`core.io.series.SeriesReader`): :func:`read_series` returns one :class:`core.io.series.SeriesLoad` per series
found, so one broken series never stops the others.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

from core.errors import ImageLoadError
from core.io.series import SeriesLoad, SeriesReader
from core.io.series_dicom import DicomSeriesReader
from core.io.series_nifti import NiftiReader

MAX_ZIP_MEMBERS = 5000
MAX_ZIP_BYTES = 2 * 1024 ** 3  # uncompressed total; a zip bomb is refused before it is expanded


def expand_zip(name: str, data: bytes) -> list[tuple[str, bytes]]:
    """The files inside a ``.zip`` upload as (member path, bytes); folders and macOS metadata skipped.
    Raises ``ImageLoadError`` for an unreadable or oversized archive (checked before expanding)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not i.is_dir() and not Path(i.filename).name.startswith(".")
                 and "__MACOSX" not in i.filename]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ImageLoadError(f"{name}: not a readable zip archive ({exc})") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ImageLoadError(f"{name}: {len(infos)} files in the archive, over the {MAX_ZIP_MEMBERS} limit")
    if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
        raise ImageLoadError(f"{name}: the archive expands to over {MAX_ZIP_BYTES // 1024 ** 3} GB; refused")
    try:
        return [(f"{name}/{i.filename}", zf.read(i)) for i in infos]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"{name}: the zip archive is damaged ({exc})") from None


def _readers() -> list[SeriesReader]:
    """The series readers in routing order: the first that accepts a file reads it."""
    return [NiftiReader(), DicomSeriesReader()]


def read_series(files: list[tuple[str, bytes]]) -> list[SeriesLoad]:
    """Every series in an upload: NIfTI files, DICOM files (any mix of series, in any order) and zips of them.

    Returns one :class:`SeriesLoad` per series (and one per file or archive that could not be read at all);
    a broken series carries its reason and the others are read normally. Never raises for bad input.
    """
    flat: list[tuple[str, bytes]] = []
    out: list[SeriesLoad] = []
    for name, data in files:
        if name.lower().endswith(".zip"):
            try:
                flat.extend(expand_zip(name, data))
            except ImageLoadError as exc:
                out.append(SeriesLoad(Path(name).name, error=str(exc)))
        else:
            flat.append((name, data))
    readers = _readers()
    routed: list[list[tuple[str, bytes]]] = [[] for _ in readers]
    for name, data in flat:
        for r, bucket in zip(readers, routed):
            if r.accepts(name, data):
                bucket.append((name, data))
                break
        else:
            out.append(SeriesLoad(Path(name).name, error=f"{Path(name).name}: not a NIfTI volume or a DICOM file; "
                                                       "skipped"))
    loads = [load for r, bucket in zip(readers, routed) if bucket for load in r.read(bucket)]
    return loads + out


def read_paths(paths: list[str | Path]) -> list[SeriesLoad]:
    """:func:`read_series` for files and folders on disk (a folder: every file under it)."""
    files: list[tuple[str, bytes]] = []
    for p in map(Path, paths):
        members = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        files.extend((str(q), q.read_bytes()) for q in members)
    return read_series(files)
