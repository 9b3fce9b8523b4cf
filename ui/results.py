"""Single-scan analysis (decode, predict, explain) and result records for download. No streamlit."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass, field

from core.io.dicom import DicomDisplay
from core.io.decode import decode_bytes
from core.io.types import DEFAULT_LIMITS, DecodeLimits
from core.inference.predictor import Prediction, Predictor
from core.explain.cam import CamResult, Explainer
from core.preprocess import Preprocessed, PreprocessSpec, head_mask


def result_record(pred: Prediction, *, file_name: str, file_sha256: str, model_name: str, model_version: str,
                  model_sha256: str, uncertain_below: float, source_format: str = "",
                  cam_method: str | None = None, cam_target: str | None = None,
                  cam_peak: tuple[float, float] | None = None, dicom_tags: dict | None = None) -> dict:
    """Everything needed to reproduce/trace one prediction. ``dicom_tags`` must be the
    non-identifying tags from ``core`` (patient tags are never requested)."""
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "file_name": file_name,
        "file_sha256": file_sha256,
        "source_format": source_format,
        "model_name": model_name,
        "model_version": model_version,
        "model_sha256": model_sha256,
        "predicted": pred.label,
        "confidence": round(float(pred.confidence), 6),
        "probabilities": {k: round(float(v), 6) for k, v in pred.probabilities.items()},
        "uncertain_below": round(float(uncertain_below), 4),
        "uncertain": bool(pred.is_uncertain(uncertain_below)),
        "out_of_distribution": bool(pred.ood),
        "ood_reason": pred.ood_reason or "",
        "ood_score": round(float(pred.ood_score), 4),
        "warnings": list(pred.warnings),
        "cam_method": cam_method or "",
        "cam_target": cam_target or "",
        "cam_peak_x": round(cam_peak[0], 4) if cam_peak else None,
        "cam_peak_y": round(cam_peak[1], 4) if cam_peak else None,
        "dicom_tags": dict(dicom_tags or {}),
        "notice": "Research use only - not for diagnosis.",
    }


def overlay_file_name(stem: str, target: str, method: str) -> str:
    """``<stem>_<explained class>_<method>.png``: the file name says what the heatmap explains."""
    safe = lambda t: "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in t)  # noqa: E731
    return f"{stem}_{safe(target)}_{safe(method)}.png"


def record_json(record: dict) -> str:
    return json.dumps(record, indent=2)


def record_csv(record: dict) -> str:
    """One-row CSV: nested fields flattened (``p_<class>``, ``dicom_<tag>``, warnings joined)."""
    flat: dict = {}
    for key, value in record.items():
        if key == "probabilities":
            flat.update({f"p_{c}": p for c, p in value.items()})
        elif key == "dicom_tags":
            flat.update({f"dicom_{t}": v for t, v in value.items()})
        elif key == "warnings":
            flat[key] = "; ".join(value)
        else:
            flat[key] = "" if value is None else value
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(flat))
    w.writeheader()
    w.writerow(flat)
    return buf.getvalue()


# -- one analysed upload -------------------------------------------------------------------

@dataclass
class Analysis:
    """A decoded, predicted file. ``pre.decoded`` holds the displayed (windowed) grey image."""

    name: str
    file_sha256: str
    n_bytes: int
    prediction: Prediction
    pre: Preprocessed
    display: DicomDisplay | None = None  # grey DICOM in modality units, for the reader's window/level
    cams: dict = field(default_factory=dict)  # (method, target index) -> core.explain.cam.CamResult
    audit_id: int | None = None  # the prediction's row in the audit trail (reader feedback refers to it)
    _head: object = field(default=None, repr=False)

    def head_mask(self, spec: PreprocessSpec):
        """bool (H, W) head mask (``core.preprocess.head_mask``), computed once per file."""
        if self._head is None:
            self._head = head_mask(self.pre, spec)
        return self._head

    @property
    def window(self) -> dict[str, str] | None:
        """The file's stored display window, as rows for the tag table, or None."""
        if self.display is None:
            return None
        if self.display.voi_lut_sequence:  # applied in preference to a stored window, as decode_dicom does
            rows = {"Source": "VOI LUT table stored in the file"}
            if self.display.voi_lut_window is not None:
                c, w = self.display.voi_lut_window
                rows["Closest linear window"] = f"centre {c:g}, width {w:g} (the sliders start here)"
            return rows
        if self.display.file_window is not None:
            c, w = self.display.file_window
            return {"Window centre": f"{c:g}", "Window width": f"{w:g}",
                    "Source": "window stored in the file (first one applied)"}
        return None

    @property
    def decoded(self):
        return self.pre.decoded

    @property
    def is_dicom(self) -> bool:
        return self.decoded is not None and self.decoded.source_format == "DICOM"


def analyse_bytes(predictor: Predictor, data: bytes, name: str, limits: DecodeLimits = DEFAULT_LIMITS) -> Analysis:
    """Decode (never asking for identifying DICOM tags) and predict. Raises ``ImageLoadError``."""
    decoded = decode_bytes(data, name, limits, include_identifying_tags=False, with_display=True)
    pred, pre = predictor.predict(decoded)
    return Analysis(name, hashlib.sha256(data).hexdigest(), len(data), pred, pre, decoded.display)


def explain(explainer: Explainer, analysis: Analysis, method: str, target: int | None) -> CamResult:
    """Grad-CAM family heatmap for ``target`` (None: predicted class), memoised on the analysis.
    Goes through ``explainer`` (the process's one for the loaded model), which holds its lock."""
    t = analysis.prediction.index if target is None else int(target)
    key = (method, t)
    if key not in analysis.cams:
        analysis.cams[key] = explainer.compute([analysis.pre], [t], method)[0]
    return analysis.cams[key]
