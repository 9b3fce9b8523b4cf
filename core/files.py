"""Walking folders of scans safely: streaming, no symlink escapes, no loops."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

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
