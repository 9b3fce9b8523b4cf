"""PDF reports (fpdf2) for a single scan, a reviewed series and a batch. No streamlit, no browser.

Every report holds the result, the key images with their heatmaps, the probabilities (drawn as bars, so no
plotting engine or browser is needed), the model identity, the model's measured performance on each
held-out source (from its ``metrics.json``) and the research-use notice on every page.

No patient-identifying tags: the inputs are the app's own result records, which carry none, and the
single-scan file name is left out (a file name can hold a patient's name); the file is named by its
SHA-256 instead.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.report.sr import NOTICE, TUMOUR_TYPES, ModelIdentity, SeriesFinding

# The PDF core fonts are Latin-1; these characters of the app's texts are spelled out instead of dropped.
_LATIN1 = str.maketrans({"—": "-", "–": "-", "≥": ">=", "≤": "<=", "→": "->", "…": "...", "’": "'", "“": '"',
                         "”": '"', "×": "x"})


def _t(text) -> str:
    return str(text).translate(_LATIN1).encode("latin-1", "replace").decode("latin-1")


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


@dataclass(frozen=True)
class KeyImage:
    """A key slice with its heatmap burned in (uint8 RGB) and a caption (no patient data)."""

    caption: str
    rgb: np.ndarray


def per_source_rows(metrics: Mapping | None) -> list[list[str]]:
    """One row per held-out part of ``metrics.json``: part, slices, tumour sensitivity, specificity.

    The sensitivity is the README's (slices with at least the minimum tumour area where the source has one)."""
    rows = []
    for s in (metrics or {}).get("sets", {}).values():
        if s.get("part") != "test":
            continue
        d = s.get("detection") or {}
        sens = d.get("sensitivity_at_least_min", d.get("sensitivity"))
        rows.append([s.get("title", "?"), str(s.get("n", "")), _f(sens), _f(d.get("specificity"))])
    return rows


def _pdf(title: str):
    from fpdf import FPDF

    class _Report(FPDF):
        def header(self) -> None:
            self.set_font("Helvetica", "B", 13)
            self.cell(0, 8, _t(title), new_x="LMARGIN", new_y="NEXT")
            self.set_font("Helvetica", "B", 9)
            self.set_text_color(160, 0, 0)
            self.cell(0, 5, _t(NOTICE + " Not a medical device."), new_x="LMARGIN", new_y="NEXT")
            self.set_text_color(0, 0, 0)
            self.ln(2)

        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("Helvetica", "I", 8)
            self.cell(0, 6, _t(f"{NOTICE}  Page {self.page_no()}"), align="C")

    pdf = _Report(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    return pdf


def _heading(pdf, text: str) -> None:
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, _t(text), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)


def _pairs(pdf, pairs: Sequence[tuple[str, str]]) -> None:
    pdf.set_font("Helvetica", "", 9)
    for key, value in pairs:
        pdf.set_font("Helvetica", "B", 9)
        pdf.cell(55, 5, _t(key))
        pdf.set_font("Helvetica", "", 9)
        pdf.multi_cell(0, 5, _t(value), new_x="LMARGIN", new_y="NEXT")


def _table(pdf, headers: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[float]) -> None:
    pdf.set_font("Helvetica", "B", 8)
    for h, w in zip(headers, widths):
        pdf.cell(w, 5, _t(h), border=1)
    pdf.ln()
    pdf.set_font("Helvetica", "", 8)
    for row in rows:
        for v, w in zip(row, widths):
            pdf.cell(w, 5, _t(v)[:int(w * 0.55)], border=1)
        pdf.ln()


def _bars(pdf, probabilities: Mapping[str, float]) -> None:
    """Horizontal probability bars drawn with rectangles (no plotting engine)."""
    pdf.set_font("Helvetica", "", 9)
    for name, p in sorted(probabilities.items(), key=lambda kv: -kv[1]):
        y = pdf.get_y()
        pdf.cell(40, 5, _t(name))
        pdf.set_fill_color(230, 230, 230)
        pdf.rect(pdf.l_margin + 40, y + 1, 100, 3, style="F")
        pdf.set_fill_color(200, 60, 40)
        pdf.rect(pdf.l_margin + 40, y + 1, 100 * max(0.0, min(1.0, float(p))), 3, style="F")
        pdf.set_x(pdf.l_margin + 145)
        pdf.cell(0, 5, f"{100 * float(p):.1f} %", new_x="LMARGIN", new_y="NEXT")


def _images(pdf, images: Sequence[KeyImage], per_row: int = 3) -> None:
    from PIL import Image

    width = (pdf.epw - 4 * (per_row - 1)) / per_row
    for start in range(0, len(images), per_row):
        row = images[start:start + per_row]
        height = max(width * im.rgb.shape[0] / im.rgb.shape[1] for im in row) + 8
        if pdf.get_y() + height > pdf.page_break_trigger:
            pdf.add_page()
        y = pdf.get_y()
        for i, im in enumerate(row):
            x = pdf.l_margin + i * (width + 4)
            pdf.image(Image.fromarray(np.ascontiguousarray(im.rgb, dtype=np.uint8)), x=x, y=y, w=width)
            pdf.set_xy(x, y + width * im.rgb.shape[0] / im.rgb.shape[1] + 1)
            pdf.set_font("Helvetica", "", 8)
            pdf.multi_cell(width, 4, _t(im.caption))
        pdf.set_xy(pdf.l_margin, y + height)


def _model_and_performance(pdf, model: ModelIdentity, metrics: Mapping | None) -> None:
    _heading(pdf, "Model")
    _pairs(pdf, [("Name, version", f"{model.name} {model.version}"), ("Weights SHA-256", model.weights_sha256),
                 ("Test-time augmentation", model.tta)])
    _heading(pdf, "Measured performance of this model on held-out data, per source")
    rows = per_source_rows(metrics)
    if rows:
        _table(pdf, ["held-out part", "slices", "tumour sensitivity", "specificity"], rows, [95, 20, 35, 30])
        pdf.set_font("Helvetica", "I", 8)
        pdf.multi_cell(0, 4, _t("Slice-level figures from the model's metrics file. A 'no tumour' result is not a "
                                "negative read."), new_x="LMARGIN", new_y="NEXT")
    else:
        pdf.multi_cell(0, 5, "No metrics file for this model: its performance is unknown.", new_x="LMARGIN",
                       new_y="NEXT")


def _done(pdf, compress: bool) -> bytes:
    pdf.set_compression(compress)
    return bytes(pdf.output())


def single_scan_pdf(record: Mapping, model: ModelIdentity, metrics: Mapping | None,
                    overlay: np.ndarray | None = None, compress: bool = True) -> bytes:
    """A one-slice report from a result record (``ui.results.result_record``) and its overlay image."""
    pdf = _pdf("Brain MRI slice review: single scan")
    _heading(pdf, "Result")
    ood = bool(record.get("out_of_distribution"))
    verdict = (f"Outside intended use: {record.get('ood_reason') or 'flagged'}" if ood else
               f"{record.get('predicted')} ({100 * float(record.get('confidence', 0)):.1f} % confidence"
               f"{', uncertain' if record.get('uncertain') else ''})")
    _pairs(pdf, [("Result", verdict), ("File SHA-256", str(record.get("file_sha256", ""))),
                 ("Analysed", str(record.get("timestamp", "")))])
    if record.get("probabilities") and not ood:
        _heading(pdf, "Probabilities")
        _bars(pdf, record["probabilities"])
    if overlay is not None:
        _heading(pdf, "Heatmap")
        what = record.get("cam_target") or record.get("predicted")
        _images(pdf, [KeyImage(f"{record.get('cam_method') or 'CAM'} for {what}", overlay)], per_row=2)
    _model_and_performance(pdf, model, metrics)
    return _done(pdf, compress)


def study_pdf(finding: SeriesFinding, model: ModelIdentity, metrics: Mapping | None, n_slices: int,
              key_images: Sequence[KeyImage] = (), rule: str = "", series_label: str = "",
              compress: bool = True) -> bytes:
    """A series report: verdict, type, highest probability, the key slices with heatmaps.

    ``series_label`` must not identify the patient (e.g. "series 3, T1 AX")."""
    pdf = _pdf("Brain MRI slice review: series")
    _heading(pdf, "Result")
    verdict = "Tumour or lesion" if finding.verdict else "No tumour found by the model"
    pairs = [("Series", series_label or "-"), ("Verdict", verdict)]
    if finding.verdict and finding.tumour_type:
        pairs.append(("Most likely type", TUMOUR_TYPES.get(finding.tumour_type, finding.tumour_type)))
    pairs += [("Highest tumour probability", f"{100 * finding.probability:.1f} %"),
              ("Positive slices", f"{len(finding.positive_slices)} of {n_slices}")]
    if rule:
        pairs.append(("Rule", rule))
    _pairs(pdf, pairs)
    if key_images:
        _heading(pdf, "Key slices")
        _images(pdf, key_images)
    _model_and_performance(pdf, model, metrics)
    return _done(pdf, compress)


def batch_pdf(rows: Sequence[Mapping], model: ModelIdentity, metrics: Mapping | None,
              key_images: Sequence[KeyImage] = (), compress: bool = True) -> bytes:
    """A batch summary: counts per predicted class, flags and errors (rows as in the batch CSV)."""
    from collections import Counter

    pdf = _pdf("Brain MRI slice review: batch")
    _heading(pdf, "Summary")
    done = [r for r in rows if not r.get("error")]
    counts = Counter(str(r.get("predicted", "")) for r in done)
    # batch rows (core.review.folder.csv_columns) name the flag "ood"; single-scan records "out_of_distribution"
    flagged = sum(1 for r in done if str(r.get("ood", r.get("out_of_distribution", ""))).lower() in ("true", "1"))
    uncertain = sum(1 for r in done if str(r.get("uncertain", "")).lower() in ("true", "1"))
    _pairs(pdf, [("Images", str(len(rows))), ("Read", str(len(done))), ("Errors", str(len(rows) - len(done))),
                 ("Outside intended use", str(flagged)), ("Uncertain", str(uncertain))])
    if done:
        _heading(pdf, "Predicted classes")
        _bars(pdf, {k or "-": v / len(done) for k, v in counts.items()})
    if key_images:
        _heading(pdf, "Key images")
        _images(pdf, key_images)
    _model_and_performance(pdf, model, metrics)
    return _done(pdf, compress)
