"""DICOM: rescale, window, MONOCHROME1, and no identifying tags unless asked."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from core.io.decode import decode_image
from core.preprocess import PreprocessSpec, preprocess


def make_dicom(path, pixels: np.ndarray, **tags) -> str:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-12345", "19700101"
    ds.SeriesDescription, ds.SliceThickness, ds.PixelSpacing = "T1 AX POST", "5", ["0.5", "0.5"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


@pytest.fixture
def scan16(scan_u8) -> np.ndarray:
    return scan_u8.astype(np.uint16) * 16  # 12-bit range, like many MR scanners


def test_dicom_matches_png_pipeline(tmp_path, scan_u8, scan16):
    spec = PreprocessSpec(image_size=96)
    p = make_dicom(tmp_path / "a.dcm", scan16)
    d = decode_image(p)
    assert d.source_format == "DICOM" and d.pixels.shape == scan16.shape
    a = preprocess(p, spec).image
    b = preprocess(scan_u8, spec).image
    assert np.abs(a - b).mean() < 0.01


def test_identifying_tags_hidden_unless_asked(tmp_path, scan16):
    p = make_dicom(tmp_path / "a.dcm", scan16)
    tags = decode_image(p).dicom_tags
    assert tags["Modality"] == "MR" and tags["SliceThickness"] == "5 mm" and tags["PixelSpacing"] == "0.5 x 0.5 mm"
    assert not any(k.startswith("Patient") for k in tags)
    assert "Doe^Jane" not in repr(tags) and "PID-12345" not in repr(tags)
    asked = decode_image(p, include_identifying_tags=True).dicom_tags
    assert asked["PatientName"] == "Doe^Jane"


def test_rescale_and_window_are_applied(tmp_path, scan16):
    # Stored values v map to 2*v - 1000; a window over the upper half clips the lower half to black.
    p = make_dicom(tmp_path / "w.dcm", scan16, RescaleSlope="2", RescaleIntercept="-1000",
                   WindowCenter=str(2 * 2040 - 1000 - 1020), WindowWidth="2040")
    d = decode_image(p)
    hu = 2.0 * scan16 - 1000
    lower = float(2 * 2040 - 1000 - 2040)
    assert np.all(d.pixels[hu <= lower] < 0.01)
    assert d.pixels.max() > 0.9


def test_monochrome1_is_inverted(tmp_path, scan16):
    a = decode_image(make_dicom(tmp_path / "m2.dcm", scan16)).pixels
    b = decode_image(make_dicom(tmp_path / "m1.dcm", scan16, PhotometricInterpretation="MONOCHROME1")).pixels
    assert np.allclose(a, 1.0 - b, atol=1e-6)


def test_extension_does_not_matter(tmp_path, scan16):
    p = make_dicom(tmp_path / "slice.img", scan16)
    assert decode_image(p).source_format == "DICOM"


def _display(path):
    from core.io.decode import decode_bytes

    with open(path, "rb") as f:
        return decode_bytes(f.read(), "x.dcm", with_display=True).display


def test_display_window_defaults_to_what_the_model_sees(tmp_path, scan16):
    from core.io.dicom import apply_display_window

    path = make_dicom(tmp_path / "w.dcm", scan16, RescaleSlope="2", RescaleIntercept="-100",
                      WindowCenter="1500", WindowWidth="2000")
    disp = _display(path)
    assert disp.file_window == (1500.0, 2000.0) and not disp.monochrome1
    lo, hi = disp.value_range
    assert lo == pytest.approx(float(scan16.min()) * 2 - 100) and hi == pytest.approx(float(scan16.max()) * 2 - 100)
    shown = apply_display_window(disp, *disp.default_window)
    assert shown.dtype == np.float32 and shown.shape == scan16.shape
    np.testing.assert_allclose(shown, decode_image(path).pixels, atol=1e-6)  # same as the model's input
    narrow = apply_display_window(disp, 1500, 10)  # a narrow window saturates almost everything
    assert ((narrow == 0) | (narrow == 1)).mean() > 0.95
    full = apply_display_window(disp, *disp.full_range_window)
    assert full.min() == pytest.approx(0, abs=1e-3) and full.max() == pytest.approx(1, abs=1e-3)


def test_display_window_without_a_stored_window_monochrome1_and_sigmoid(tmp_path, scan16):
    from core.io.dicom import apply_display_window

    disp = _display(make_dicom(tmp_path / "n.dcm", scan16))
    assert disp.file_window is None and disp.default_window == disp.full_range_window
    inv = _display(make_dicom(tmp_path / "m1.dcm", scan16, PhotometricInterpretation="MONOCHROME1"))
    c, w = inv.default_window
    np.testing.assert_allclose(apply_display_window(inv, c, w), 1 - apply_display_window(disp, c, w), atol=1e-6)
    mid = int(np.median(scan16[scan16 > 0]))
    sig = _display(make_dicom(tmp_path / "s.dcm", scan16, WindowCenter=str(mid), WindowWidth="800",
                              VOILUTFunction="SIGMOID"))
    out = apply_display_window(sig, *sig.default_window)
    linear = apply_display_window(disp, *sig.default_window)
    inside = np.abs(sig.values - mid) < 400
    assert sig.voi_function == "SIGMOID" and inside.any()
    assert 0 < out[inside].min() and out[inside].max() < 1 and not np.allclose(out, linear, atol=1e-3)
    assert apply_display_window(disp, 100, 0).max() <= 1  # width below 1 is raised, not an error


def test_voi_lut_table_is_applied_for_the_model_and_starts_the_display_window(tmp_path, scan16):
    """A file with a VOI LUT table and no window: the model input goes through the table, and the sliders'
    default window is the linear window closest to it, so the first display matches the model's input."""
    from pydicom.dataset import Dataset as Item
    from pydicom.sequence import Sequence

    from core.io.dicom import apply_display_window

    lut = Item()
    lut.add_new(0x00283002, "US", [2001, 1000, 16])  # LUT Descriptor: entries, first input mapped, bits
    lut.add_new(0x00283006, "US", np.round(np.linspace(0, 65535, 2001)).astype(np.uint16).tolist())  # LUT Data
    path = make_dicom(tmp_path / "lut.dcm", scan16, VOILUTSequence=Sequence([lut]))
    pixels = decode_image(path).pixels
    assert (pixels[scan16 <= 1000] == 0).all() and (pixels[scan16 >= 3000] == 1).all()  # the table, not min-max
    disp = _display(path)
    assert disp.voi_lut_sequence and disp.default_window == pytest.approx((2000.0, 2000.0), abs=1.0)
    np.testing.assert_allclose(apply_display_window(disp, *disp.default_window), pixels, atol=2e-3)
    # With a window stored as well, the table still wins (pydicom's preference), for the model and the sliders.
    both = make_dicom(tmp_path / "both.dcm", scan16, VOILUTSequence=Sequence([lut]), WindowCenter="500",
                      WindowWidth="100")
    disp_both = _display(both)
    assert disp_both.file_window == (500.0, 100.0) and disp_both.default_window == disp.default_window
    np.testing.assert_allclose(decode_image(both).pixels, pixels, atol=1e-6)
