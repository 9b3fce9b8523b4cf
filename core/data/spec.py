"""The declared training data: which sources, how their labels map onto the model's classes, how they are
grouped and split. Read from a small JSON file (``data_specs/*.json``) and recorded whole in the model card.

Two kinds of source:

* ``folder_tree``: ``ROOT/<folder>/**/<image>``. ``labels`` maps folder names to classes with shell
  patterns (``fnmatch``, first match wins), ``sequences`` maps folder names to the MRI sequence. Files are
  grouped by near-duplicate cluster (SHA-256 or head-crop pHash); ``test_root`` names a fixed test tree
  (the Kaggle Testing split), otherwise ``test_fraction`` of the groups is held out.
* ``volumes``: NIfTI scans cut into axial slices (``core.io.volumes``). ``layout`` is ``case_folders``
  (``ROOT/<case>/<image>.nii.gz`` with a ``label_volume`` of tumour labels beside them) or ``files``
  (``ROOT/<file>.nii.gz``, case and sequence read from the file name with ``case_pattern``). A case (a
  patient or a healthy subject) is one group: all its slices, of every sequence, land in one split, which
  ``val_cases`` / ``test_cases`` name explicitly (the collections are small; a list reads better than a
  seed).

Why the class mapping is what it is (``data_specs/multisource.json``): the WHO gliomas of the 44-class set
(astrocytoma, glioblastoma, oligodendroglioma, ependymoma) are ``glioma``; meningioma is ``meningioma``; every
other lesion (schwannoma, central neurocytoma, papilloma, germinoma, medulloblastoma, metastatic carcinoma,
ganglioglioma, granuloma, tuberculoma) is ``other_lesion``: the four-class scheme has no name for them and
calling them "no tumour" is the one answer that must never happen.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

SOURCE_KINDS = ("folder_tree", "volumes")
VOLUME_LAYOUTS = ("case_folders", "files")
UNKNOWN_SEQUENCE = "unknown"
# Sequences reported together in the per-sequence metrics: FLAIR is a T2-weighted sequence.
SEQUENCE_FAMILIES = {"T1": "T1", "T1C+": "T1C+", "T2": "T2/FLAIR", "FLAIR": "T2/FLAIR"}


class DataSpecError(ValueError):
    """A data spec that cannot be used, with the reason."""


@dataclass(frozen=True)
class SourceSpec:
    """One declared source. Paths are relative to the data root given to ``train.py``."""

    name: str
    kind: str
    root: str
    labels: dict[str, str]
    title: str = ""  # how pages and reports name the source
    sequences: dict[str, str] = field(default_factory=dict)
    test_root: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.0
    # volumes only
    layout: str = "case_folders"
    images: dict[str, str] = field(default_factory=dict)  # case_folders: image stem -> sequence
    label_volume: str | None = None
    case_pattern: str | None = None  # files: regex with named groups ``case`` and ``sequence``
    val_cases: tuple[str, ...] = ()
    test_cases: tuple[str, ...] = ()
    min_brain_fraction: float = 0.3  # of the volume's largest axial foreground area
    max_depth_mm: float | None = None  # scans with skull and neck: slices at most this far below the vertex
    min_tumour_mm2: float = 100.0  # a tumour slice for training and the headline sensitivity (1 cm^2)
    # The images show no skull (BraTS publishes skull-stripped brains): training's skull-strip augmentation
    # leaves them alone.
    skull_stripped: bool = False
    core_labels: tuple[int, ...] = ()  # label values of the tumour core (BraTS: 1, 3, 4; 2 is oedema), reported apart

    def label_for(self, key: str) -> str | None:
        """Class name for a folder name (trees) or ``"tumour"`` / ``"no_tumour"`` (volumes); None: not used."""
        for pattern, cls in self.labels.items():
            if fnmatch.fnmatchcase(key, pattern):
                return cls
        return None

    def sequence_for(self, key: str) -> str:
        for pattern, seq in self.sequences.items():
            if fnmatch.fnmatchcase(key, pattern):
                return seq
        return UNKNOWN_SEQUENCE

    def case_and_sequence(self, file_name: str) -> tuple[str, str] | None:
        """``files`` layout: (case, sequence) from a volume's file name, None when it does not match."""
        m = re.match(self.case_pattern or r"^(?P<case>.+?)\.nii(\.gz)?$", file_name)
        if not m:
            return None
        seq = m.groupdict().get("sequence") or ""
        return m.group("case"), self.sequences.get(seq, UNKNOWN_SEQUENCE) if seq else UNKNOWN_SEQUENCE

    def split_of_case(self, case: str) -> str:
        return "test" if case in self.test_cases else "val" if case in self.val_cases else "train"


@dataclass(frozen=True)
class DataSpec:
    """The whole declaration: classes in model order, and the sources."""

    name: str
    class_names: tuple[str, ...]
    sources: tuple[SourceSpec, ...]
    near_distance: int = 20
    description: str = ""

    def __post_init__(self) -> None:
        if len(set(self.class_names)) != len(self.class_names) or len(self.class_names) < 2:
            raise DataSpecError(f"class_names must be at least two distinct names, got {list(self.class_names)}")
        names = [s.name for s in self.sources]
        if not names or len(set(names)) != len(names):
            raise DataSpecError(f"sources need distinct names, got {names}")
        for s in self.sources:
            where = f"source {s.name!r}"
            if s.kind not in SOURCE_KINDS:
                raise DataSpecError(f"{where}: kind must be one of {SOURCE_KINDS}, got {s.kind!r}")
            unknown = sorted(set(s.labels.values()) - set(self.class_names))
            if unknown:
                raise DataSpecError(f"{where}: labels map to {unknown}, which are not in class_names")
            if not 0 <= s.val_fraction < 1 or not 0 <= s.test_fraction < 1 or s.val_fraction + s.test_fraction >= 1:
                raise DataSpecError(f"{where}: val_fraction and test_fraction must be in [0, 1) and sum below 1")
            if s.kind == "volumes":
                if s.layout not in VOLUME_LAYOUTS:
                    raise DataSpecError(f"{where}: layout must be one of {VOLUME_LAYOUTS}, got {s.layout!r}")
                if s.layout == "case_folders" and not s.images:
                    raise DataSpecError(f"{where}: case_folders needs 'images' (file stem -> sequence)")
                both = set(s.val_cases) & set(s.test_cases)
                if both:
                    raise DataSpecError(f"{where}: cases {sorted(both)} are listed for validation and for test")
                if s.case_pattern:
                    try:
                        groups = re.compile(s.case_pattern).groupindex
                    except re.error as exc:
                        raise DataSpecError(f"{where}: case_pattern is not a valid regex ({exc})") from None
                    if "case" not in groups:
                        raise DataSpecError(f"{where}: case_pattern needs a named group 'case'")

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        try:
            sources = []
            for s in d["sources"]:
                s = dict(s)
                for k in ("val_cases", "test_cases", "core_labels"):
                    s[k] = tuple(s.get(k, ()))
                known = {k: v for k, v in s.items() if k in SourceSpec.__dataclass_fields__}
                extra = sorted(set(s) - set(known) - {"comment"})
                if extra:
                    raise DataSpecError(f"source {s.get('name')!r}: unknown field(s) {extra}")
                sources.append(SourceSpec(**known))
            return cls(name=str(d["name"]), class_names=tuple(d["class_names"]), sources=tuple(sources),
                       near_distance=int(d.get("near_distance", 20)), description=str(d.get("description", "")))
        except (KeyError, TypeError) as exc:
            raise DataSpecError(f"data spec is missing or has a malformed field: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> "DataSpec":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise DataSpecError(f"data spec not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise DataSpecError(f"data spec {path} is not valid JSON ({exc})") from None

    @classmethod
    def single_tree(cls, train_dir: str, test_dir: str | None, class_names: list[str], val_fraction: float,
                    near_distance: int) -> "DataSpec":
        """The classic layout ``ROOT/Training/<class>`` + ``ROOT/Testing/<class>`` as one source."""
        source = SourceSpec(name="tree", kind="folder_tree", root=train_dir, test_root=test_dir or None,
                            labels={n: n for n in class_names}, val_fraction=val_fraction)
        return cls(name="single-tree", class_names=tuple(class_names), sources=(source,),
                   near_distance=near_distance)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        for s in d["sources"]:
            for k in ("val_cases", "test_cases", "core_labels"):
                s[k] = list(s[k])
        return d

    def sha256(self) -> str:
        """Identifies the declaration (not the data: the card's fingerprints do that)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def source(self, name: str) -> SourceSpec:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)
