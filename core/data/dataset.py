"""Labelled folder trees: ``ROOT/<class name>/**/<image>``.

One pass decodes every file once and keeps, per file, what the audit, the split and
training need: SHA-256, perceptual hash, size/channel facts and the preprocessed
(S, S) uint8 image. The pass is cached on disk, keyed by the file list and the spec.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from tqdm import tqdm

from core.errors import ImageLoadError
from core.io.files import IMAGE_EXTENSIONS
from core.io.decode import decode_image
from core.preprocess import PreprocessSpec, preprocess_decoded


CACHE_VERSION = 2  # bump when what a cache entry holds changes


@dataclass
class FileRecord:
    """Facts about one file of a labelled tree. ``label`` indexes the class list."""

    path: str  # relative to the tree root
    label: int
    sha256: str = ""
    phash: str = ""  # 64 hex digits: 256-bit imagehash.phash of the head-cropped image
    width: int = 0
    height: int = 0
    mode: str = ""
    error: str = ""
    # Multi-source training (core.data.sources): where the record comes from and what is known about it.
    source: str = ""
    sequence: str = ""  # "T1", "T1C+", "T2", "FLAIR" or "unknown"
    detail: str = ""  # the source's own finer label: the folder ("Schwannoma T2") or "tumour" / "no tumour"
    case: str = ""  # patient or subject of a volume slice; "" for single images
    tumour_mm2: float = -1.0  # labelled tumour area of a volume slice (mm^2); -1: not measured


def class_names_of(root: str | Path) -> list[str]:
    """Sorted names of the sub-folders of ``root``: one class each."""
    root = Path(root)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{root} has no class sub-folders; expected ROOT/<class>/<images>")
    return names


def list_labelled_files(root: str | Path, class_names: list[str]) -> list[tuple[str, int]]:
    """(relative path, label) for every image file below ``root/<class>``, sorted."""
    root = Path(root)
    out = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for dirpath, _, files in os.walk(folder):
            for f in files:
                if Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                    out.append((str(Path(dirpath, f).relative_to(root)), label))
    out.sort()
    return out


def _process_one(args: tuple[str, str, int, dict]) -> tuple[FileRecord, np.ndarray | None]:
    root, rel, label, spec_dict = args
    spec = PreprocessSpec.from_dict(spec_dict)
    rec = FileRecord(rel, label)
    try:
        data = Path(root, rel).read_bytes()
        rec.sha256 = hashlib.sha256(data).hexdigest()
        decoded = decode_image(data)
        rec.mode = decoded.original_mode
        rec.width, rec.height = decoded.size
        pre = preprocess_decoded(decoded, spec)
        img8 = (pre.image * 255 + 0.5).astype(np.uint8)
        # Hashing the head crop (not the raw file) aligns resized/re-framed copies; 256 bits
        # keep different slices apart (64-bit hashes of whole MRI slices collide often).
        rec.phash = str(imagehash.phash(Image.fromarray(img8), hash_size=16))
        return rec, img8
    except (ImageLoadError, OSError) as exc:
        rec.error = str(exc)
        return rec, None


def index_tree(root: str | Path, class_names: list[str], spec: PreprocessSpec,
               cache_dir: str | Path | None = None, workers: int = 2,
               desc: str = "indexing") -> tuple[list[FileRecord], np.ndarray]:
    """Decode every file of a labelled tree once.

    Returns the records and a uint8 array (N, S, S) of preprocessed images (zeros for
    unreadable files, whose ``error`` is set).
    """
    root = Path(root)
    files = list_labelled_files(root, class_names)
    # mean/std only standardise at tensor time; the cached [0, 1] images do not depend on them.
    geometry = replace(spec, mean=0.0, std=1.0).to_dict()
    key_src = json.dumps([CACHE_VERSION, str(root.resolve()), files, geometry]).encode()
    key = hashlib.sha256(key_src).hexdigest()[:16]
    cache = Path(cache_dir) / f"index-{key}.npz" if cache_dir else None
    if cache and cache.exists():
        z = np.load(cache, allow_pickle=False)
        records = [FileRecord(**r) for r in json.loads(str(z["records"]))]
        return records, z["images"]
    s = spec.image_size
    images = np.zeros((len(files), s, s), np.uint8)
    records: list[FileRecord] = []
    jobs = [(str(root), rel, label, spec.to_dict()) for rel, label in files]
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as ex:
        for i, (rec, img) in enumerate(tqdm(ex.map(_process_one, jobs, chunksize=16), total=len(jobs), desc=desc)):
            records.append(rec)
            if img is not None:
                images[i] = img
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=images, records=json.dumps([asdict(r) for r in records]))
    return records, images


class _Inline:
    """Stand-in for an executor that maps in-process (workers=1, tests)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, it, chunksize=1):
        return map(fn, it)


def fingerprint(records: list[FileRecord]) -> str:
    """SHA-256 over (path, label, file hash) of a tree: identifies the exact data used."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.path):
        h.update(f"{r.path}\t{r.label}\t{r.sha256}\n".encode())
    return h.hexdigest()
