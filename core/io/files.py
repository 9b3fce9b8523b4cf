"""Walking folders of scans safely (streaming, no symlink escapes, no loops), and list files of paths or URIs."""
from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".tif", ".tiff", ".bmp"})


class PathNotAllowedError(ValueError):
    """A requested folder lies outside the configured roots. ``str(err)`` is user-facing."""


def resolve_within(path: str | os.PathLike, allowed_roots: list[str | os.PathLike]) -> Path:
    """Resolve ``path`` (symlinks, ``..``) and refuse it unless it lies inside an allowed root.

    Relative paths are taken relative to the first allowed root.
    """
    roots = [Path(r).resolve() for r in allowed_roots]
    if not roots:
        raise PathNotAllowedError("no folders are configured as allowed roots")
    if "\x00" in str(path):  # os calls reject NUL with a bare ValueError
        raise PathNotAllowedError(f"{str(path)!r} is not a valid folder path (it contains a NUL character)")
    raw = Path(os.path.expanduser(str(path)))
    try:
        candidate = (raw if raw.is_absolute() else roots[0] / raw).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop (Python < 3.13)
        raise PathNotAllowedError(f"{path} cannot be resolved ({exc})") from None
    for root in roots:
        if candidate == root or root in candidate.parents:
            return candidate
    allowed = ", ".join(str(r) for r in roots)
    raise PathNotAllowedError(f"{path} is outside the allowed folders ({allowed})")


def iter_image_files(root: str | os.PathLike, extensions: frozenset[str] = IMAGE_EXTENSIONS,
                     skipped: list[tuple[str, str]] | None = None) -> Iterator[Path]:
    """Yield image files below ``root`` one by one, in a stable (sorted per folder) order.

    Streams with ``os.scandir``: memory holds one folder listing at a time, not the tree.
    Symlinked folders are followed only when they resolve inside ``root``; each real
    folder is visited once, so symlink loops end. Symlinked files that point outside
    ``root`` are skipped. Skips are reported through ``skipped`` as (path, reason).
    """
    root_real = Path(root).resolve()
    seen: set[tuple[int, int]] = set()

    def note(p: Path, why: str) -> None:
        if skipped is not None:
            skipped.append((str(p), why))

    def walk(folder: Path) -> Iterator[Path]:
        try:
            st = folder.stat()
        except OSError as exc:
            note(folder, f"folder cannot be read ({exc.strerror})")
            return
        if (st.st_dev, st.st_ino) in seen:
            note(folder, "folder already visited (symlink loop or a second link to it); skipped")
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            note(folder, f"folder cannot be listed ({exc.strerror})")
            return
        for entry in entries:
            p = Path(entry.path)
            try:
                if entry.is_symlink():
                    target = p.resolve()
                    if not (target == root_real or root_real in target.parents):
                        note(p, "symlink points outside the folder being reviewed; skipped")
                        continue
                if entry.is_dir():
                    yield from walk(p)
                elif entry.is_file() and p.suffix.lower() in extensions:
                    yield p
            except (OSError, RuntimeError) as exc:  # RuntimeError: resolve() on a loop
                note(p, f"cannot be followed ({exc})")

    yield from walk(Path(root))


def count_image_files(root: str | os.PathLike) -> int:
    """Number of files :func:`iter_image_files` would yield (streams; for ETAs)."""
    return sum(1 for _ in iter_image_files(root))


# -- list files and URIs ---------------------------------------------------------------------------------------
# A scheme of two or more letters before "://" (so a Windows drive "C:\" is a path, not a URI).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_SNIFF_BYTES = 65536  # a list file whose start is not text is refused before anything is read


def is_uri(source: object) -> bool:
    """True for a string naming a file by URI (``file://``, ``s3://``, ``gs://``, ``https://``…), which
    :func:`read_uri_bytes` reads through fsspec; paths (``str`` or ``Path``) are False."""
    return isinstance(source, str) and bool(_URI.match(source))


def uri_name(uri: str) -> str:
    """The file name part of a URI (what error messages name: never the bucket or folders, which can name a
    patient; the audit trail replaces this name with ``<file>``)."""
    return posixpath.basename(urlsplit(uri).path.rstrip("/")) or uri.split("://", 1)[0] + " URI"


def read_uri_bytes(uri: str, max_bytes: int) -> bytes:
    """The bytes of the file ``uri`` names, read through fsspec (its schemes: ``file://`` built in; object stores
    with their fsspec package, e.g. s3fs, gcsfs, adlfs). Raises :class:`core.errors.ImageLoadError` with a
    message naming the file for an unknown scheme, a missing package, a missing, unreachable, empty or
    too large file: the batch turns it into an error row and goes on with the next file."""
    from core.errors import ImageLoadError

    name = uri_name(uri)
    scheme = uri.split("://", 1)[0].lower()
    try:
        import fsspec
    except ImportError:
        raise ImageLoadError(f"{name}: reading {scheme}:// URIs needs fsspec (pip install fsspec)") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as exc:  # a known scheme whose package is not installed: fsspec's text says which
        raise ImageLoadError(f"{name}: {scheme}:// is not readable here ({exc})") from None
    except ValueError as exc:  # "Protocol not known"
        raise ImageLoadError(f"{name}: unsupported URI scheme {scheme}:// ({exc})") from None
    try:
        with fs.open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # never more than the limit (+1 to tell "over it")
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: not found at its URI") from None
    except PermissionError:
        raise ImageLoadError(f"{name}: permission denied by the store") from None
    except IsADirectoryError:
        raise ImageLoadError(f"{name}: is a folder, not an image file") from None
    except Exception as exc:  # noqa: BLE001 - network and store errors come in many types; one row, not the run
        raise ImageLoadError(f"{name}: cannot be read from {scheme}:// ({type(exc).__name__}: "
                             f"{str(exc).replace(uri, name).replace(path, name)[:300]})") from None
    if not data:
        raise ImageLoadError(f"{name}: file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageLoadError(f"{name}: file is over the {max_bytes / 2**20:.0f} MB size limit")
    return data


def iter_list_file(list_file: str | os.PathLike) -> Iterator[Path | str]:
    """The entries of a list file, one per line, read lazily (a list of millions of slices is never held):
    URIs (:func:`is_uri`) as strings, paths as :class:`Path` (relative ones taken against the list file's
    folder). Blank lines and ``#`` comments are skipped. Raises ValueError before yielding anything when the
    file does not start as text (a binary file given by mistake)."""
    list_file = Path(list_file)
    with open(list_file, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\x00" in head or not _utf8_start(head):
        raise ValueError(f"{list_file} is not a folder or a text file listing paths")
    return _list_entries(list_file)


def _utf8_start(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # the sniffed bytes may end inside a character: that is still text
        return len(head) == _SNIFF_BYTES and exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def _list_entries(list_file: Path) -> Iterator[Path | str]:
    base = list_file.parent
    with open(list_file, encoding="utf-8", errors="replace") as f:  # a bad line becomes a "not found" row
        for line in f:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield entry if is_uri(entry) else base / entry
