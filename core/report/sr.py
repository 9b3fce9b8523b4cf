"""Results written back into the study: a DICOM Comprehensive 3D SR (TID 1500) and a Secondary Capture overlay.

The SR holds one TID 1501 measurement group for the reviewed series:

- qualitative evaluation *Brain tumour or lesion* = SCT Present / Absent (the series verdict);
- finding type (TID 1501 DCM *Finding*) = the most likely tumour type (only when the verdict is Present);
- measurement *Highest tumour probability* (unit UCUM "1");
- algorithm identification: model name, version, and the parameters ``weights_sha256=<hex>`` and
  ``tta=<mode>`` (test-time augmentation, which changes outputs for the same weights);
- source images: the SOP Instances the verdict rests on (the positive slices, or every evaluated slice
  when none is positive). Every evaluated slice is also in the evidence sequence (Current Requested
  Procedure Evidence Sequence).

At the report's root: a *Qualitative Evaluations* container with the text "Research use only, not for
diagnosis." The document is ``VerificationFlag`` UNVERIFIED, ``PreliminaryFlag`` PRELIMINARY.

The tumour types use a local coding scheme ``99BRAINMRI`` (a "99" prefix is DICOM's convention for local
codes): the model's classes are its own and not a SNOMED diagnosis.

**Identifiers copied from the source images** (:data:`FILING_ATTRIBUTES`, nothing else; see
:func:`filing_header`): ``PatientID`` and ``PatientName`` (the PACS files an object under its patient; a
different or empty patient would split the study or be refused), ``StudyInstanceUID`` (what puts the
results in the same study), ``StudyDate``, ``StudyTime``, ``StudyID``, ``AccessionNumber`` (so the study
list and the RIS show the results with their study) and ``SpecificCharacterSet`` (to decode the name).
``PatientBirthDate``, ``PatientSex`` and ``ReferringPhysicianName`` are written empty (DICOM type 2).
Age, weight, other IDs, institution, operators and every other attribute of the source are not copied.

This module does not import streamlit.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: the card module pulls in torch, which an SR does not need
    from core.model.card import ModelCard

NOTICE = "Research use only, not for diagnosis."
MANUFACTURER = "brain-mri-slice-review"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
LOCAL_SCHEME = "99BRAINMRI"

# Copied from the first source image (see the module docstring for why each one).
FILING_ATTRIBUTES = ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                     "AccessionNumber", "SpecificCharacterSet")
# Type 2 attributes highdicom reads from the source: present but empty, so nothing more is carried over.
EMPTY_ATTRIBUTES = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName")
# What a reference to an evaluated instance needs (not identifying).
REFERENCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality")

TUMOUR_TYPES = {"glioma": "Glioma", "meningioma": "Meningioma", "pituitary": "Pituitary tumour",
                "other_lesion": "Other tumour or lesion"}


@dataclass(frozen=True)
class SeriesFinding:
    """The series-level result to report (independent of how it was computed)."""

    verdict: bool  # True: tumour or lesion present
    tumour_type: str | None  # a key of TUMOUR_TYPES, or None
    probability: float  # highest tumour probability in the series, 0..1
    positive_slices: list[str] = field(default_factory=list)  # SOP Instance UIDs of the positive slices


@dataclass(frozen=True)
class ModelIdentity:
    """The model that made the result, as written in the SR's algorithm identification."""

    name: str
    version: str
    weights_sha256: str
    tta: str = "none"  # test-time augmentation changes outputs for the same weights, so it is recorded too

    @classmethod
    def from_card(cls, card: ModelCard) -> ModelIdentity:
        """From a model card (``weights/model_card.json``)."""
        return cls(name=str(card.name or "unnamed-model"), version=str(card.version or ""),
                   weights_sha256=str(card.weights.sha256 or ""), tta=str(card.inference.tta or "none"))


def _codes():
    from highdicom.sr import CodedConcept

    return {
        "tumour": CodedConcept("TUMOUR", LOCAL_SCHEME, "Brain tumour or lesion"),
        "probability": CodedConcept("TUMOUR_PROB", LOCAL_SCHEME, "Highest tumour probability"),
        "no_units": CodedConcept("1", "UCUM", "no units"),
        "procedure": CodedConcept("24590-2", "LN", "MR Brain"),
        "qualitative": CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
    }


def type_code(tumour_type: str):
    """The local code of one of the model's tumour classes."""
    from highdicom.sr import CodedConcept

    if tumour_type not in TUMOUR_TYPES:
        raise ValueError(f"unknown tumour type {tumour_type!r}; expected one of {sorted(TUMOUR_TYPES)}")
    return CodedConcept(tumour_type.upper(), LOCAL_SCHEME, TUMOUR_TYPES[tumour_type])


def filing_header(ds):
    """A header-only copy of a source image holding :data:`FILING_ATTRIBUTES` and the reference UIDs only.

    highdicom copies the whole Patient and Study modules of its first source; giving it this instead is
    what keeps every other identifying attribute out of the results."""
    from pydicom import Dataset

    missing = [k for k in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID") if k not in ds]
    if missing:
        raise ValueError(f"source image lacks {', '.join(missing)}")
    out = Dataset()
    for key in FILING_ATTRIBUTES + REFERENCE_ATTRIBUTES:
        if key in ds:
            setattr(out, key, ds[key].value)
    for key in EMPTY_ATTRIBUTES + ("PatientID", "PatientName", "StudyDate", "StudyTime", "StudyID", "AccessionNumber"):
        if key not in out:
            setattr(out, key, None)
    return out


def _check(finding: SeriesFinding, model: ModelIdentity, headers: list) -> None:
    if not headers:
        raise ValueError("at least one evaluated source image is needed")
    if len({str(h.StudyInstanceUID) for h in headers}) != 1:
        raise ValueError("the evaluated images belong to more than one study")
    if not 0.0 <= finding.probability <= 1.0:
        raise ValueError("probability must be between 0 and 1")
    if finding.verdict and finding.tumour_type is not None:
        type_code(finding.tumour_type)
    known = {str(h.SOPInstanceUID) for h in headers}
    unknown = [u for u in finding.positive_slices if u not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} positive slice(s) are not among the evaluated images")
    if len(model.weights_sha256) != 64:
        raise ValueError("weights_sha256 must be the 64-character hex digest")


def build_sr(finding: SeriesFinding, source_images: Sequence, model: ModelIdentity,
             series_number: int = SR_SERIES_NUMBER, instance_number: int = 1):
    """A ``highdicom.sr.Comprehensive3DSR`` reporting ``finding`` on the evaluated ``source_images``.

    ``source_images`` are the evaluated slices' datasets (headers are enough: read them with
    ``stop_before_pixels=True``); all must be of one study."""
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        ContainerContentItem,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        RelationshipTypeValues,
        SourceImageForMeasurementGroup,
        TextContentItem,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    headers = [filing_header(ds) for ds in source_images]
    _check(finding, model, headers)
    c = _codes()
    algorithm = AlgorithmIdentification(name=model.name, version=model.version,
                                        parameters=[f"weights_sha256={model.weights_sha256}", f"tta={model.tta}"])
    device = DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[model.name, model.version, model.weights_sha256]),  # same model, same UID
        name=model.name[:64], manufacturer_name=MANUFACTURER, model_name=f"{model.name} {model.version}"[:64])
    context = ObservationContext(observer_device_context=ObserverContext(observer_type=codes.DCM.Device,
                                                                         observer_identifying_attributes=device))
    evaluations = [QualitativeEvaluation(c["tumour"], codes.SCT.Present if finding.verdict else codes.SCT.Absent)]
    # TID 1501 row 5 "Finding" (DCM 121071) is the type of the finding: the tumour type, when there is one.
    finding_type = type_code(finding.tumour_type) if finding.verdict and finding.tumour_type else None
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    basis = [by_uid[u] for u in finding.positive_slices] or headers
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier="Series verdict"),
        algorithm_id=algorithm,
        finding_type=finding_type,
        qualitative_evaluations=evaluations,
        measurements=[Measurement(name=c["probability"], value=float(finding.probability), unit=c["no_units"],
                                  algorithm_id=algorithm)],
        source_images=[SourceImageForMeasurementGroup(str(h.SOPClassUID), str(h.SOPInstanceUID)) for h in basis],
    )
    report = MeasurementReport(observation_context=context, procedure_reported=c["procedure"],
                               imaging_measurements=[group])
    # TID 1500 row 12: free-text qualitative evaluations at the root (highdicom has no argument for it).
    notice = ContainerContentItem(name=c["qualitative"], relationship_type=RelationshipTypeValues.CONTAINS)
    notice.ContentSequence = [TextContentItem(name=codes.DCM.Comment, value=NOTICE,
                                              relationship_type=RelationshipTypeValues.CONTAINS)]
    report[0].ContentSequence.append(notice)
    sr = hd.sr.Comprehensive3DSR(
        evidence=headers, content=report[0], series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=instance_number, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False,
        series_description="AI result - research use only"[:64],
    )
    return sr


def burn_notice(rgb: np.ndarray, text: str = NOTICE) -> np.ndarray:
    """The image with a black band under it carrying ``text`` in white (uint8 RGB in, uint8 RGB out).

    The text is wrapped to the image's width (never cut off), so a small image gets a taller band."""
    from PIL import Image, ImageDraw, ImageFont

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("the overlay must be a uint8 RGB array of shape (rows, columns, 3)")
    h, w = rgb.shape[:2]
    size = int(np.clip(w // 32, 9, 24))
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        if lines and measure.textlength(f"{lines[-1]} {word}", font=font) <= w - 4:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    line_h = size + 3
    img = Image.new("RGB", (w, h + line_h * len(lines) + 4), (0, 0, 0))
    img.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((2, h + 2 + i * line_h), line, fill=(255, 255, 255), font=font)
    return np.asarray(img, dtype=np.uint8)


def _orientation(ds) -> tuple[str, str] | None:
    """Patient Orientation (row, column directions) from Image Orientation (Patient), by the dominant axis."""
    try:
        iop = [float(v) for v in ds.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(iop) != 6:
        return None

    def letter(v: list[float]) -> str:
        axis = int(np.argmax(np.abs(v)))
        return ("LR", "PA", "HF")[axis][0 if v[axis] > 0 else 1]

    return letter(iop[:3]), letter(iop[3:])


def build_overlay_sc(overlay_rgb: np.ndarray, source_image, model: ModelIdentity,
                     series_uid: str | None = None, series_number: int = SC_SERIES_NUMBER, instance_number: int = 1):
    """A ``highdicom.sc.SCImage`` of ``overlay_rgb`` (heatmap burned in) with :data:`NOTICE` burned under it.

    Filed in ``source_image``'s study with the same identifiers as the SR, and pointing back at that slice
    (Source Image Sequence). Pass one ``series_uid`` for all key slices of one result."""
    import highdicom as hd
    from pydicom import Dataset
    from pydicom.uid import generate_uid

    h = filing_header(source_image)
    pixels = burn_notice(overlay_rgb)
    sc = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=str(h.StudyInstanceUID), series_instance_uid=series_uid or generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, patient_id=h.PatientID, patient_name=h.PatientName,
        patient_birth_date=None, patient_sex=None, accession_number=h.AccessionNumber, study_id=h.StudyID,
        study_date=h.StudyDate or None, study_time=h.StudyTime or None, referring_physician_name=None,
        patient_orientation=_orientation(source_image) or ("L", "P"),
    )
    if _orientation(source_image) is None:
        sc.PatientOrientation = None  # type 2: unknown, rather than a guessed direction
    if "SpecificCharacterSet" in h:
        sc.SpecificCharacterSet = h.SpecificCharacterSet
    sc.SeriesDescription = "AI overlay - research use only"
    sc.BurnedInAnnotation = "YES"  # the notice and the colour map are in the pixels
    sc.ImageComments = f"{NOTICE} Model {model.name} {model.version}, weights SHA-256 {model.weights_sha256}."
    sc.DerivationDescription = "Model heatmap overlaid on the source slice"
    ref = Dataset()
    ref.ReferencedSOPClassUID = h.SOPClassUID
    ref.ReferencedSOPInstanceUID = h.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


@dataclass(frozen=True)
class ReportedResult:
    """What :func:`read_sr` finds in one of our SR documents (for showing what was sent, and for tests)."""

    study_uid: str
    verdict: bool | None  # None: the document has no verdict item
    tumour_type: str | None
    probability: float | None
    model: ModelIdentity | None
    source_instances: list[str]  # SOP Instance UIDs the verdict rests on
    evidence_instances: list[str]  # every evaluated SOP Instance UID
    verification: str
    notices: list[str]


def read_sr(dataset) -> ReportedResult:
    """Parse an SR written by :func:`build_sr` with highdicom (``Comprehensive3DSR.from_dataset``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    # Parsed even when given a freshly built SR: only from_dataset turns its content into a MeasurementReport.
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    groups = sr.content.get_image_measurement_groups()
    verdict = tumour_type = probability = model = None
    sources: list[str] = []
    if groups:
        group = groups[0]
        for ev in group.get_qualitative_evaluations():
            if ev.name.value == "TUMOUR" and ev.name.scheme_designator == LOCAL_SCHEME:
                verdict = ev.value == codes.SCT.Present
        ft = group.finding_type
        if ft is not None and ft.scheme_designator == LOCAL_SCHEME:
            tumour_type = ft.value.lower()
        for m in group.get_measurements():
            if m.name.value == "TUMOUR_PROB":
                probability = float(m.value)
        sources = [s.referenced_sop_instance_uid for s in group.source_images]
        # Algorithm identification (TID 4019) has no highdicom accessor: read its three items by concept.
        algo: dict[str, list[str]] = {}
        for item in group[0].ContentSequence:
            code = item.ConceptNameCodeSequence[0].CodeValue
            if code in ("111001", "111003", "111002") and item.ValueType == "TEXT":
                algo.setdefault(code, []).append(str(item.TextValue))
        params = dict(p.split("=", 1) for p in algo.get("111002", []) if "=" in p)
        if "111001" in algo:
            model = ModelIdentity(algo["111001"][0], (algo.get("111003") or [""])[0],
                                  params.get("weights_sha256", ""), params.get("tta", "none"))
    evidence = [str(ref.ReferencedSOPInstanceUID) for item in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
                for series in item.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence]

    def texts(seq):
        for item in seq:
            if item.get("ValueType") == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106":
                yield str(item.TextValue)
            if "ContentSequence" in item:
                yield from texts(item.ContentSequence)

    return ReportedResult(study_uid=str(sr.StudyInstanceUID), verdict=verdict, tumour_type=tumour_type,
                          probability=probability, model=model, source_instances=sources,
                          evidence_instances=evidence, verification=str(sr.VerificationFlag),
                          notices=list(texts(sr.ContentSequence)))


def build_results(finding: SeriesFinding, source_images: Sequence, model: ModelIdentity,
                  overlays: Sequence[tuple[np.ndarray, str]] = ()) -> list:
    """Everything to store for one reviewed series: the SR, then one Secondary Capture per key-slice overlay.

    ``overlays`` are ``(uint8 RGB image, SOP Instance UID of the slice it shows)``; the captures share one
    series. Hand the list to :func:`core.pacs.client.store`."""
    from pydicom.uid import generate_uid

    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_images}
    out = [build_sr(finding, source_images, model)]
    sc_series = generate_uid()
    for i, (rgb, sop_uid) in enumerate(overlays, start=1):
        if sop_uid not in by_uid:
            raise ValueError("an overlay's slice is not among the evaluated images")
        out.append(build_overlay_sc(rgb, by_uid[sop_uid], model, series_uid=sc_series, instance_number=i))
    return out


PDF_SERIES_NUMBER = 9903
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


def build_encapsulated_pdf(pdf: bytes, source_image, title: str = "AI report - research use only",
                           series_number: int = PDF_SERIES_NUMBER):
    """An Encapsulated PDF instance (modality DOC) holding ``pdf``, filed in ``source_image``'s study.

    Carries the same identifiers as the SR (:func:`filing_header`) and nothing else of the source; the PDF
    itself must hold no patient data (``core.report.pdf`` writes none)."""
    import datetime as dt

    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if not pdf.startswith(b"%PDF"):
        raise ValueError("not a PDF document")
    h = filing_header(source_image)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for key in ("SpecificCharacterSet",) + FILING_ATTRIBUTES[:-1] + EMPTY_ATTRIBUTES:
        if key in h:
            setattr(ds, key, h[key].value)
    now = dt.datetime.now()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "DOC", generate_uid(), series_number, 1
    ds.SeriesDescription = title[:64]
    ds.Manufacturer, ds.ConversionType = MANUFACTURER, "WSD"
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S"), None
    ds.BurnedInAnnotation = "YES"  # the research-use notice is printed on every page
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # OB values have an even length
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds
