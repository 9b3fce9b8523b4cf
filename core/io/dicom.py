"""DICOM slices to the same grey [0, 1] image as every other input.

Order of operations follows the DICOM standard's display pipeline:
modality LUT (rescale slope/intercept) -> VOI LUT or window -> MONOCHROME1 inversion.
Identifying tags are never returned unless the caller asks for them.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from core.errors import ImageLoadError
from core.io.types import DecodedImage, DecodeLimits, array_to_grey, format_mpx, to_unit_range

# Shown in the UI and written to results: acquisition facts, nothing that identifies a person.
SAFE_TAGS = (
    "Modality", "SeriesDescription", "SequenceName", "ScanningSequence", "MRAcquisitionType",
    "MagneticFieldStrength", "SliceThickness", "PixelSpacing", "RepetitionTime", "EchoTime",
    "Rows", "Columns", "PhotometricInterpretation", "BodyPartExamined",
)
IDENTIFYING_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                    "InstitutionName", "ReferringPhysicianName", "AccessionNumber", "StudyDate")


def looks_like_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def tag_text(ds, keyword: str) -> str | None:
    """One tag of a pydicom dataset as display text (spacings and thickness in mm), or None when absent/empty."""
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


def _read_dataset(data: bytes, name: str, limits: DecodeLimits):
    """Parse the file and check it has pixel data of an acceptable size, before decoding pixels."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
        raise ImageLoadError(f"{name}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageLoadError(f"{name}: DICOM file has no pixel data (e.g. a report or structured document)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > limits.max_pixels:
        raise ImageLoadError(f"{name}: DICOM header says {cols}x{rows} px ({format_mpx(rows * cols)}), over the "
                             f"{format_mpx(limits.max_pixels)} limit; refused before decoding")
    if rows and cols and min(rows, cols) < limits.min_side:
        raise ImageLoadError(f"{name}: DICOM image is only {cols}x{rows} px; at least "
                             f"{limits.min_side} px per side is needed")
    return ds


def _pixel_frame(ds, name: str, warns: list[str]) -> np.ndarray:
    """The stored pixel array; the middle frame of multi-frame data (said in ``warns``)."""
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
    if n_frames > 1 and arr.ndim >= 3:
        mid = n_frames // 2
        arr = arr[mid]
        warns.append(f"multi-frame DICOM: used the middle frame ({mid + 1} of {n_frames})")
    return arr


def _modality_values(arr: np.ndarray, ds, name: str, warns: list[str]) -> np.ndarray:
    """Grey pixels in modality units (rescale slope/intercept or modality LUT), float64, all finite."""
    from pydicom.pixels import apply_modality_lut

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
    return arr


def decode_dicom(data: bytes, name: str, limits: DecodeLimits, include_identifying_tags: bool = False,
                 with_display: bool = False) -> DecodedImage:
    """Decode DICOM bytes. Multi-frame data uses the middle frame (said in ``warnings``).

    With ``with_display`` a grey slice also gets ``.display`` (a ``DicomDisplay`` in modality units, for a
    viewer's window/level) from the same parse, so a viewer never reads the file twice.
    """
    from pydicom.pixels import apply_voi_lut

    ds = _read_dataset(data, name, limits)
    warns: list[str] = []
    arr = _pixel_frame(ds, name, warns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    display = None
    if samples == 1:
        arr = _modality_values(arr, ds, name, warns)
        if with_display:
            display = _display_of(ds, arr)
        has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
        if has_voi:
            try:
                # A LUT table is indexed by whole input values (pydicom warns on float input); a window is not.
                lut_input = np.rint(arr).astype(np.int64) if "VOILUTSequence" in ds else arr
                arr = np.asarray(apply_voi_lut(lut_input, ds), dtype=np.float64)
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                warns.append(f"window/VOI LUT could not be applied ({exc}); used the full range")
        unit = to_unit_range(arr)
        if photometric == "MONOCHROME1":  # MONOCHROME1: low values are bright
            unit = 1.0 - unit
        out = DecodedImage(unit.astype(np.float32), "DICOM", photometric, int(ds.get("BitsAllocated", 16)))
    else:
        out = array_to_grey(np.asarray(arr), fmt="DICOM", mode=photometric)
    out.warnings.extend(warns)
    tags = {k: v for k in SAFE_TAGS if (v := tag_text(ds, k)) is not None}
    if include_identifying_tags:
        tags.update({k: v for k in IDENTIFYING_TAGS if (v := tag_text(ds, k)) is not None})
    out.dicom_tags = tags
    out.display = display
    h, w = out.pixels.shape
    if min(h, w) < limits.min_side:
        raise ImageLoadError(f"{name}: DICOM image is only {w}x{h} px; at least {limits.min_side} px per side is needed")
    return out


# -- display window (what the reader sees; never what the model sees) ---------------------------

@dataclass
class DicomDisplay:
    """A grey DICOM slice kept in modality units so a viewer can change the window/level.

    Changing the display window never changes the prediction: the model always gets the
    image as ``decode_dicom`` produced it (the file's own window, then preprocessing).

    Attributes:
        values: float32 (H, W), modality units (e.g. raw MR signal after rescale), finite.
        monochrome1: low values are bright; inverted after windowing, as in ``decode_dicom``.
        file_window: (centre, width) of the first window stored in the file, or None.
        voi_lut_sequence: the file carries a VOI LUT table rather than (or besides) a window.
        voi_function: the file's VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID).
        voi_lut_window: (centre, width) of the linear window closest to the file's VOI LUT table, or None.
    """

    values: np.ndarray
    monochrome1: bool
    file_window: tuple[float, float] | None
    voi_lut_sequence: bool
    voi_function: str = "LINEAR"
    voi_lut_window: tuple[float, float] | None = None

    @property
    def value_range(self) -> tuple[float, float]:
        return float(self.values.min()), float(self.values.max())

    @property
    def full_range_window(self) -> tuple[float, float]:
        """(centre, width) spanning every value in the slice."""
        lo, hi = self.value_range
        return (lo + hi) / 2, max(hi - lo, 1.0)

    @property
    def default_window(self) -> tuple[float, float]:
        """Where the sliders start: what ``decode_dicom`` applied for the model. That is the VOI LUT table
        (as its closest linear window) when there is one, as pydicom prefers it, else the file's window,
        else the full range."""
        return self.voi_lut_window or self.file_window or self.full_range_window


def _display_of(ds, values: np.ndarray) -> DicomDisplay:
    """The display slice of a grey dataset whose pixels are ``values`` (modality units, float64 (H, W))."""
    file_window = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            c, w = ds.WindowCenter, ds.WindowWidth
            c = float(c[0] if getattr(ds["WindowCenter"], "VM", 1) > 1 else c)
            w = float(w[0] if getattr(ds["WindowWidth"], "VM", 1) > 1 else w)
            file_window = (c, w) if np.isfinite(c) and np.isfinite(w) and w > 0 else None
        except (TypeError, ValueError, IndexError):
            file_window = None
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    return DicomDisplay(values.astype(np.float32), str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1",
                        file_window, "VOILUTSequence" in ds,
                        func if func in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR",
                        _voi_lut_as_window(ds) if "VOILUTSequence" in ds else None)


def _voi_lut_as_window(ds) -> tuple[float, float] | None:
    """The input range over which the file's first VOI LUT rises from its lowest to its highest output,
    as (centre, width): the linear window closest to the LUT, so the sliders start where the file's own
    display (and the model input) starts. None when the LUT cannot be read or is flat."""
    from pydicom.pixels import apply_voi

    try:
        descriptor = ds.VOILUTSequence[0].LUTDescriptor  # entries (0 means 65536), first input value mapped, bits
        n_entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        inputs = np.arange(first, first + n_entries, dtype=np.int64)
        outputs = np.asarray(apply_voi(inputs, ds), dtype=np.float64)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, NotImplementedError):
        return None
    rising = np.flatnonzero(outputs > outputs.min())
    top = np.flatnonzero(outputs >= outputs.max())
    if not len(rising) or not len(top):
        return None
    lo, hi = float(inputs[max(rising[0] - 1, 0)]), float(inputs[top[0]])  # last input at the floor, first at the top
    return (lo + hi) / 2, max(hi - lo, 1.0)


def apply_display_window(display: DicomDisplay, centre: float, width: float) -> np.ndarray:
    """Window/level the slice for display with pydicom's VOI windowing (PS3.3 C.11.2).

    Args:
        centre, width: the window in modality units; width is raised to at least 1.
    Returns:
        float32 (H, W) in [0, 1], MONOCHROME1 already inverted.
    """
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing
    from pydicom.valuerep import DSfloat

    # The modality LUT is already applied, so the output range is ours to pick: 16-bit unsigned.
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 16, 0
    ds.WindowCenter = DSfloat(float(centre), auto_format=True)
    ds.WindowWidth = DSfloat(max(float(width), 1.0), auto_format=True)
    ds.VOILUTFunction = display.voi_function
    unit = np.clip(apply_windowing(display.values.astype(np.float64), ds) / 65535.0, 0.0, 1.0)
    return (1.0 - unit if display.monochrome1 else unit).astype(np.float32)
