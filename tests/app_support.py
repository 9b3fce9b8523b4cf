"""Helpers shared by the dashboard tests (AppTest and browser): synthetic folders and app env."""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "streamlit_app.py"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
CORRUPT_NAME = "corrupt.jpg"
# A JPEG header followed by garbage: decodes as "truncated or corrupt".
CORRUPT_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x13\x37" * 40


@dataclass
class AppEnv:
    root: Path  # the only allowed root
    data: Path  # app data (audit trail)
    weights: Path

    @property
    def audit_path(self) -> Path:
        return self.data / "audit.sqlite3"

    def env(self) -> dict[str, str]:
        return {"MRI_WEIGHTS_DIR": str(self.weights), "MRI_ALLOWED_ROOTS": str(self.root),
                "MRI_APP_DATA": str(self.data), "MRI_DEVICE": "cpu"}


def make_app_env(tmp: Path, weights: Path, monkeypatch=None) -> AppEnv:
    env = AppEnv(tmp / "allowed", tmp / "appdata", Path(weights))
    env.root.mkdir(parents=True, exist_ok=True)
    if monkeypatch is not None:
        monkeypatch.delenv("MRI_APP_CONFIG", raising=False)
        monkeypatch.delenv("MRI_DATA_ROOT", raising=False)
        for k, v in env.env().items():
            monkeypatch.setenv(k, v)
    return env


# A Testing set in which 2 of 10 tumour slices were read as no tumour (one at 97 %, one at 50 %).
MISSED_TESTING = {
    "n": 13, "accuracy": 10 / 13, "confusion_matrix": [[4, 0, 1, 0], [0, 3, 1, 0], [0, 0, 2, 1], [0, 0, 0, 1]],
    "misclassified": [{"file": "glioma/g1.jpg", "true": "glioma", "predicted": "notumor", "confidence": 0.97},
                      {"file": "meningioma/m1.jpg", "true": "meningioma", "predicted": "notumor", "confidence": 0.5},
                      {"file": "notumor/n1.jpg", "true": "notumor", "predicted": "pituitary", "confidence": 0.8}],
}


def always_no_tumour_bundle(src: Path, dst: Path) -> Path:
    """A copy of the model in ``src`` that reads every slice as "notumor" (a large head bias) and is never
    "outside intended use", with a metrics.json holding :data:`MISSED_TESTING` as its full Testing set."""
    from core.model.checkpoint import load_bundle, save_bundle

    bundle = load_bundle(src)
    with torch.no_grad():
        bundle.model.head.bias[bundle.class_names.index("notumor")] += 100.0
    card = replace(bundle.card, ood=replace(bundle.card.ood, threshold=float("inf")))
    card = save_bundle(dst, bundle.model, card, ood=bundle.ood)
    (dst / "metrics.json").write_text(json.dumps({"model": {"name": card.name, **card.identity},
                                                  "class_names": bundle.class_names,
                                                  "sets": {"testing_full": MISSED_TESTING}}))
    return dst


def scan_png(seed: int = 0, label: int = 1, size: int = 192) -> bytes:
    from core.data.synthetic import fake_scan

    buf = io.BytesIO()
    Image.fromarray(fake_scan(np.random.default_rng(seed), size, label)).save(buf, format="PNG")
    return buf.getvalue()


def photo_png(seed: int = 0) -> bytes:
    """A colourful non-MRI picture (should be flagged out-of-distribution)."""
    from core.data.synthetic import non_mri_image

    buf = io.BytesIO()
    Image.fromarray(non_mri_image("shapes", np.random.default_rng(seed))).save(buf, format="PNG")
    return buf.getvalue()


def make_labelled_folder(root: Path, per_class: int = 2, corrupt: bool = True, size: int = 160) -> Path:
    """ROOT/<class>/<n>.png synthetic slices, plus one corrupted JPEG under glioma/."""
    from core.data.synthetic import fake_scan

    rng = np.random.default_rng(7)
    for k, c in enumerate(CLASSES):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(fake_scan(rng, size, k)).save(d / f"{c}_{i}.png")
    if corrupt:
        (root / "glioma" / CORRUPT_NAME).write_bytes(CORRUPT_BYTES)
    return root


def dicom_bytes(with_patient: bool = True) -> bytes:
    """A small MR DICOM slice with a window, acquisition tags and (fake) patient tags."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    from core.data.synthetic import fake_scan

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("slice.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 AX POST"
    ds.SliceThickness = "5"
    ds.PixelSpacing = ["0.5", "0.5"]
    if with_patient:
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "SECRET-ID-123"
        ds.InstitutionName = "General Hospital"
    img = fake_scan(np.random.default_rng(3), 128, 2).astype(np.uint16) * 16
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = "2000", "4000"
    ds.PixelData = img.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def all_text(at) -> str:
    """Every piece of text an AppTest run put on the page (markdown, captions, alerts, metrics, tables)."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "error", "warning", "info", "success",
                 "code"):
        parts.extend(str(getattr(e, "value", "")) for e in getattr(at, kind))
    parts.extend(f"{m.label} {m.value}" for m in at.metric)
    for img in at.image:
        parts.extend(img.captions)
    for df in at.dataframe:
        try:
            parts.append(df.value.to_csv())
        except Exception:  # noqa: BLE001
            pass
    return "\n".join(parts)


def set_env_for_subprocess(env: AppEnv) -> dict[str, str]:
    out = dict(os.environ)
    out.pop("MRI_APP_CONFIG", None)
    out.update(env.env())
    return out


def other_lesion_bundle(src: Path, dst: Path) -> Path:
    """A copy of the model in ``src`` with a fifth class, "other_lesion", that it gives every slice (a new head
    row with a large bias), never "outside intended use"; metrics.json holds a held-out set in the per-source
    format that ``train.py`` writes."""
    from core.model.checkpoint import load_bundle, save_bundle
    from core.evaluation.metrics import class_recall_as, detection_metrics, evaluate_predictions

    bundle = load_bundle(src)
    head = bundle.model.head
    new = torch.nn.Linear(head.in_features, head.out_features + 1)
    with torch.no_grad():
        new.weight[:-1] = head.weight
        new.bias[:-1] = head.bias
        new.weight[-1] = 0.0
        new.bias[-1] = 100.0
    bundle.model.head = new
    names = bundle.class_names + ["other_lesion"]
    card = replace(bundle.card, class_names=names, ood=replace(bundle.card.ood, threshold=float("inf")),
                   architecture=replace(bundle.card.architecture, num_classes=len(names)))
    ood = bundle.ood
    if ood is not None:  # one more (unused) class mean for the OOD statistics
        ood.means = torch.cat([ood.means, ood.means[:1]])
    card = save_bundle(dst, bundle.model, card, ood=ood)
    labels = np.array([names.index("other_lesion")] * 3 + [names.index("notumor")] * 2)
    o, n = names.index("other_lesion"), names.index("notumor")
    probs = np.eye(len(names))[[o, o, n, o, n]]  # one other lesion called no tumour, one false alarm
    held = evaluate_predictions(labels, probs, names, [f"x{i}.jpg" for i in range(5)], n_boot=20)
    held["detection"] = detection_metrics(labels, probs, names, 0.6, sequences=["T1", "T2", "T2", "T1", "T2"])
    held["other_lesion_called_no_tumour"] = class_recall_as(labels, probs, names, "other_lesion", ["notumor"])
    held.update(source="feltrin", part="test", title="Feltrin 44-class held-out", definition="synthetic")
    (dst / "metrics.json").write_text(json.dumps({"model": {"name": card.name, **card.identity},
                                                  "class_names": names, "sets": {"feltrin_test": held}}))
    return dst


TYPE_SEQUENCE_TYPES = ("Astrocitoma", "Meningioma", "_NORMAL")


def type_sequence_bundle(src: Path, dst: Path, name: str = "tiny-type-sequence") -> Path:
    """A copy of the model in ``src`` with nine "<type> <sequence>" classes (3 types x T1 / T1C+ / T2), like the
    44-class model in miniature, under the card name ``name``; its metrics.json holds one evaluated test set."""
    from core.model.checkpoint import load_bundle, save_bundle
    from core.evaluation.metrics import evaluate_predictions
    from core.inference.ood import MahalanobisOOD

    bundle = load_bundle(src)
    names = [f"{t} {q}" for t in TYPE_SEQUENCE_TYPES for q in ("T1", "T1C+", "T2")]
    model, old = bundle.model, bundle.model.head
    rows = torch.arange(len(names)) % old.out_features
    model.head = torch.nn.Linear(old.in_features, len(names))
    with torch.no_grad():  # each new class reuses an old class's weights, plus a small distinct offset
        model.head.weight.copy_(old.weight[rows] + 0.01 * torch.randn(len(names), old.in_features,
                                                                      generator=torch.Generator().manual_seed(0)))
        model.head.bias.copy_(old.bias[rows])
    ood = MahalanobisOOD(bundle.ood.means[rows], bundle.ood.precision, bundle.ood.threshold) if bundle.ood else None
    card = replace(bundle.card, name=name, class_names=names,
                   architecture=replace(bundle.card.architecture, num_classes=len(names)))
    card = save_bundle(dst, model, card, ood=ood)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(names), 60)
    probs = rng.random((60, len(names)))
    probs[np.arange(60), labels] += 1.5
    probs /= probs.sum(1, keepdims=True)
    test = evaluate_predictions(labels, probs, names, [f"{names[k]}/{i}.png" for i, k in enumerate(labels)],
                                n_boot=20)
    (dst / "metrics.json").write_text(json.dumps({"model": {"name": name, **card.identity},
                                                  "class_names": names,
                                                  "sets": {"feltrin_test": dict(test, title="Feltrin held-out", part="test")}}))
    return dst
