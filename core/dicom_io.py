"""DICOM slices to the same grey [0, 1] image as every other input.

Order of operations follows the DICOM standard's display pipeline:
modality LUT (rescale slope/intercept) -> VOI LUT or window -> MONOCHROME1 inversion.
Identifying tags are never returned unless the caller asks for them.
"""
from __future__ import annotations

import io
import warnings

import numpy as np

from core.errors import ImageLoadError
from core.image_io import DecodedImage, DecodeLimits, _mpx, array_to_grey, to_unit_range

# Shown in the UI and written to results: acquisition facts, nothing that identifies a person.
SAFE_TAGS = (
    "Modality", "SeriesDescription", "SequenceName", "ScanningSequence", "MRAcquisitionType",
    "MagneticFieldStrength", "SliceThickness", "PixelSpacing", "RepetitionTime", "EchoTime",
    "Rows", "Columns", "PhotometricInterpretation", "BodyPartExamined",
)
IDENTIFYING_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                    "InstitutionName", "ReferringPhysicianName", "AccessionNumber", "StudyDate")


def _tag_text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if keyword == "PixelSpacing":
        try:
            return " x ".join(f"{float(v):g}" for v in value) + " mm"
        except (TypeError, ValueError):
            return str(value)
    if keyword == "SliceThickness":
        try:
            return f"{float(value):g} mm"
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def decode_dicom(data: bytes, name: str, limits: DecodeLimits,
                 include_identifying_tags: bool = False) -> DecodedImage:
    """Decode DICOM bytes. Multi-frame data uses the middle frame (said in ``warnings``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
        raise ImageLoadError(f"{name}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageLoadError(f"{name}: DICOM file has no pixel data (e.g. a report or structured document)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > limits.max_pixels:
        raise ImageLoadError(f"{name}: DICOM header says {cols}x{rows} px ({_mpx(rows * cols)}), over the "
                             f"{_mpx(limits.max_pixels)} limit; refused before decoding")
    if rows and cols and min(rows, cols) < limits.min_side:
        raise ImageLoadError(f"{name}: DICOM image is only {cols}x{rows} px; at least "
                             f"{limits.min_side} px per side is needed")
    warns: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts))
        msg = " ".join(str(exc).split())  # pydicom's text spans lines; keep one
        if "missing dependencies" in msg or "no pixel data decoders" in msg.lower() or isinstance(exc, NotImplementedError):
            raise ImageLoadError(f"{name}: compressed DICOM ({ts_name}) needs a codec that is not installed "
                                 f"(e.g. pylibjpeg or gdcm): {msg}") from None
        # A decoder exists but failed: the compressed data is damaged, not the installation.
        raise ImageLoadError(f"{name}: compressed DICOM ({ts_name}) pixel data is corrupt; the installed "
                             f"codec could not decode it: {msg}") from None
    except (AttributeError, ValueError, TypeError, KeyError, EOFError) as exc:
        raise ImageLoadError(f"{name}: DICOM pixel data is missing or corrupt ({exc})") from None

    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if n_frames > 1 and arr.ndim >= 3:
        mid = n_frames // 2
        arr = arr[mid]
        warns.append(f"multi-frame DICOM: used the middle frame ({mid + 1} of {n_frames})")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples == 1:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf is handled just below
            arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        bad = ~np.isfinite(arr)
        if bad.all():
            raise ImageLoadError(f"{name}: DICOM pixel values are all NaN/inf after rescale")
        if bad.any():
            # Rescale to NaN/inf happens with corrupt slope/intercept; replace so the
            # window and the model see finite data, and tell the user.
            arr[bad] = float(arr[~bad].min())
            warns.append(f"{int(bad.sum())} non-finite pixel values (NaN/inf) were replaced by the minimum")
        has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
        if has_voi:
            try:
                arr = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                warns.append(f"window/VOI LUT could not be applied ({exc}); used the full range")
        unit = to_unit_range(arr)
        if photometric == "MONOCHROME1":  # MONOCHROME1: low values are bright
            unit = 1.0 - unit
        out = DecodedImage(unit.astype(np.float32), "DICOM", photometric, int(ds.get("BitsAllocated", 16)))
    else:
        out = array_to_grey(np.asarray(arr), fmt="DICOM", mode=photometric)
    out.warnings.extend(warns)
    tags = {k: v for k in SAFE_TAGS if (v := _tag_text(ds, k)) is not None}
    if include_identifying_tags:
        tags.update({k: v for k in IDENTIFYING_TAGS if (v := _tag_text(ds, k)) is not None})
    out.dicom_tags = tags
    h, w = out.pixels.shape
    if min(h, w) < limits.min_side:
        raise ImageLoadError(f"{name}: DICOM image is only {w}x{h} px; at least {limits.min_side} px per side is needed")
    return out
