"""Index the declared sources (``core.data.spec``) into records and preprocessed images.

Every source, whatever its kind, becomes a list of :class:`core.data.dataset.FileRecord` (label in the model's
class order, source, sequence, the source's own finer label, case) and a uint8 (N, S, S) array of images
preprocessed by the one definition in ``core.preprocess``. Both are cached on disk, keyed by the files and
the preprocessing geometry.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from core.data.spec import DataSpec, SourceSpec, UNKNOWN_SEQUENCE
from core.data.dataset import CACHE_VERSION, FileRecord, class_names_of, index_tree
from core.io.types import DecodedImage
from core.preprocess import PreprocessSpec, preprocess_decoded
from core.io.volumes import AxialVolume, brain_slices, intensity_scale, load_volume, slice_image, tumour_areas_mm2


@dataclass
class IndexedSource:
    """One source's records and images. ``fixed_test``: bool (N,), records of the source's ``test_root``."""

    spec: SourceSpec
    records: list[FileRecord]
    images: np.ndarray  # uint8 (N, S, S)
    fixed_test: np.ndarray


@dataclass
class VolumeSliceItem:
    """One axial slice of a declared volume, decoded, with what its labels say."""

    case: str
    sequence: str
    path: Path  # the volume file
    index: int  # axial slice, 0 = most inferior after reorientation to RAS+
    image: DecodedImage
    tumour_mm2: float | None  # None: the volume has no tumour labels
    tumour_mask: np.ndarray | None = None  # bool (H, W) in the slice's display frame, when asked for
    core_mm2: float | None = None  # area of the source's ``core_labels`` (None: not declared)

    @property
    def record_path(self) -> str:
        """Stable id of the slice: ``<case>/<file>#z<k>``."""
        return f"{self.case}/{self.path.name}#z{self.index:03d}"


def _tree(source: SourceSpec, root: Path, class_names: list[str], spec: PreprocessSpec, cache_dir, workers: int,
          fixed_test: bool) -> tuple[list[FileRecord], np.ndarray]:
    folders = [f for f in class_names_of(root) if source.label_for(f) is not None]
    if not folders:
        raise ValueError(f"source {source.name!r}: no folder of {root} matches its labels {list(source.labels)}")
    records, images = index_tree(root, folders, spec, cache_dir, workers,
                                 f"index {source.name}{' test' if fixed_test else ''}")
    for r in records:
        folder = folders[r.label]
        r.source, r.detail = source.name, folder
        r.sequence = source.sequence_for(folder)
        r.label = class_names.index(source.label_for(folder))
    return records, images


def volume_files(source: SourceSpec, root: Path) -> list[tuple[str, str, Path, Path | None]]:
    """(case, sequence, image path, label path or None) of every volume of a source, sorted."""
    out = []
    if source.layout == "case_folders":
        for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            label = case_dir / f"{source.label_volume}.nii.gz" if source.label_volume else None
            for stem, seq in source.images.items():
                image = next((case_dir / f"{stem}{ext}" for ext in (".nii.gz", ".nii")
                              if (case_dir / f"{stem}{ext}").is_file()), None)
                if image is not None:
                    out.append((case_dir.name, seq, image, label if label and label.is_file() else None))
    else:
        for f in sorted(root.iterdir()):
            parsed = source.case_and_sequence(f.name) if f.is_file() else None
            if parsed:
                out.append((parsed[0], parsed[1], f, None))
    return out


def slice_label(source: SourceSpec, tumour_mm2: float | None) -> tuple[str, str]:
    """(class name, detail) of a volume slice from its labelled tumour area (None: a volume without labels)."""
    if tumour_mm2 is None or tumour_mm2 <= 0:
        return source.labels["no_tumour"], "no tumour"
    return source.labels["tumour"], "tumour" if tumour_mm2 >= source.min_tumour_mm2 else "small tumour"


def iter_volume_slices(source: SourceSpec, root: Path, cases: set[str] | None = None,
                       with_masks: bool = False) -> Iterator[VolumeSliceItem]:
    """The brain slices of a volume source (``core.io.volumes.brain_slices``), volume by volume, in file order;
    only those of ``cases`` when given. ``with_masks`` adds each slice's tumour mask (the pointing game)."""
    labels_cache: dict[Path, AxialVolume] = {}
    for case, seq, path, label_path in volume_files(source, root):
        if cases is not None and case not in cases:
            continue
        vol = load_volume(path)
        scale = intensity_scale(vol)
        labels = None
        if label_path is not None:
            if label_path not in labels_cache:
                labels_cache.clear()  # one label volume at a time: the image volumes of a case come together
                labels_cache[label_path] = load_volume(label_path)
            labels = labels_cache[label_path]
        areas = None if labels is None else tumour_areas_mm2(labels)
        core = None if labels is None or not source.core_labels else tumour_areas_mm2(labels, source.core_labels)
        for k in brain_slices(vol, source.min_brain_fraction, source.max_depth_mm):
            mask = labels.axial(k) > 0 if with_masks and labels is not None else None
            yield VolumeSliceItem(case, seq or UNKNOWN_SEQUENCE, path, k, slice_image(vol, k, scale),
                                  None if areas is None else float(areas[k]), mask,
                                  None if core is None else float(core[k]))


def _volumes(source: SourceSpec, root: Path, class_names: list[str], spec: PreprocessSpec,
             cache_dir) -> tuple[list[FileRecord], np.ndarray]:
    files = volume_files(source, root)
    if not files:
        raise ValueError(f"source {source.name!r}: no NIfTI volumes found under {root}")
    geometry = replace(spec, mean=0.0, std=1.0).to_dict()
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for _, _, p, lab in files for p in filter(None, (p, lab))]
    key = hashlib.sha256(json.dumps([CACHE_VERSION, asdict(source), stamp, geometry],
                                    default=str).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"volumes-{key}.npz" if cache_dir else None
    if cache and cache.exists():
        z = np.load(cache, allow_pickle=False)
        return [FileRecord(**r) for r in json.loads(str(z["records"]))], z["images"]
    records: list[FileRecord] = []
    images: list[np.ndarray] = []
    for item in tqdm(iter_volume_slices(source, root), desc=f"index {source.name}", unit=" slices"):
        cls, detail = slice_label(source, item.tumour_mm2)
        pre = preprocess_decoded(item.image, spec)
        h, w = item.image.pixels.shape
        records.append(FileRecord(
            path=item.record_path, label=class_names.index(cls),
            sha256=hashlib.sha256(item.image.pixels.tobytes()).hexdigest(), width=w, height=h, mode="F",
            source=source.name, sequence=item.sequence, detail=detail, case=item.case,
            tumour_mm2=-1.0 if item.tumour_mm2 is None else item.tumour_mm2))
        images.append((pre.image * 255 + 0.5).astype(np.uint8))
    arr = np.stack(images) if images else np.zeros((0, spec.image_size, spec.image_size), np.uint8)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=arr, records=json.dumps([asdict(r) for r in records]))
    return records, arr


def index_source(source: SourceSpec, data_root: str | Path, class_names: list[str], spec: PreprocessSpec,
                 cache_dir: str | Path | None = ".cache", workers: int = 2) -> IndexedSource:
    """Decode and preprocess every item of one source (its fixed test tree included)."""
    root = Path(data_root) / source.root
    if not root.is_dir():
        raise ValueError(f"source {source.name!r}: folder not found: {root}")
    if source.kind == "volumes":
        records, images = _volumes(source, root, class_names, spec, cache_dir)
        return IndexedSource(source, records, images, np.zeros(len(records), bool))
    records, images = _tree(source, root, class_names, spec, cache_dir, workers, fixed_test=False)
    fixed = np.zeros(len(records), bool)
    if source.test_root and (Path(data_root) / source.test_root).is_dir():
        t_records, t_images = _tree(source, Path(data_root) / source.test_root, class_names, spec, cache_dir,
                                    workers, fixed_test=True)
        records, images = records + t_records, np.concatenate([images, t_images])
        fixed = np.r_[fixed, np.ones(len(t_records), bool)]
    return IndexedSource(source, records, images, fixed)


def index_sources(data: DataSpec, data_root: str | Path, spec: PreprocessSpec, cache_dir: str | Path | None = ".cache",
                  workers: int = 2) -> list[IndexedSource]:
    """:func:`index_source` for every declared source, in declaration order."""
    return [index_source(s, data_root, list(data.class_names), spec, cache_dir, workers) for s in data.sources]


def source_root(source: SourceSpec, data_root: str | Path, fixed_test: bool = False) -> Path:
    """Folder a record's ``path`` is relative to."""
    return Path(data_root) / (source.test_root if fixed_test and source.test_root else source.root)
