"""Synthetic volumes, NIfTI files and DICOM series for the study-review tests (no real data needed)."""
from __future__ import annotations

import gzip
import io
import zipfile

import numpy as np

PATIENT_TAGS = {"PatientName": "Doe^Jane", "PatientID": "SECRET-ID-123", "PatientBirthDate": "19700101",
                "InstitutionName": "General Hospital", "AccessionNumber": "ACC-998877",
                "ReferringPhysicianName": "House^Gregory"}
SECRETS = ("Doe", "Jane", "SECRET-ID-123", "19700101", "General Hospital", "ACC-998877", "House")


def synthetic_brain(shape_xyz: tuple[int, int, int] = (64, 72, 24), seed: int = 0) -> np.ndarray:
    """A head-like float32 (X, Y, Z) RAS+ volume: an ellipsoid with a skull rim, texture and a bright blob in the
    right-anterior-superior part, so any flip or axis swap changes the slices."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_xyz], indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.1) ** 2)
    vol = np.where(r < 1.0, 400.0, 0.0) + np.where((r > 0.88) & (r < 1.0), 500.0, 0.0)
    vol += np.where(r < 1.0, rng.normal(0, 30, shape_xyz), 0.0)
    blob = ((x - 0.35) ** 2 + (y - 0.3) ** 2 + (z - 0.3) ** 2) < 0.05
    vol[blob] = 1200.0
    return np.clip(vol, 0, None).astype(np.float32)


def nifti_bytes(data: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str] = ("R", "A", "S"),
                gz: bool = True) -> bytes:
    """``data`` (X, Y, Z) in RAS+ with ``affine``, stored with its voxel axes in the order ``axcodes``."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, ornt_transform

    img = nib.Nifti1Image(data, affine)
    img = img.as_reoriented(ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(axcodes)))
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


def display_slices(vol_xyz: np.ndarray) -> np.ndarray:
    """The axial slices of a RAS+ volume as a DICOM axial series stores them: (Z, rows=A->P, cols=R->L)."""
    return np.ascontiguousarray(vol_xyz[::-1, ::-1, :].transpose(2, 1, 0))


def _dataset(img: np.ndarray, uid: str, number: int, desc: str, patient: bool):
    from factories import mr_dataset

    ds = mr_dataset("slice.dcm")
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = "MR", uid, number, desc
    ds.StudyInstanceUID = "1.2.3.4"
    if patient:
        for k, v in PATIENT_TAGS.items():
            setattr(ds, k, v)
    u16 = np.clip(img, 0, 65535).astype(np.uint16)
    ds.Rows, ds.Columns = u16.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = u16.tobytes()
    return ds


def _write(ds) -> bytes:
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def dicom_series(slices_zhw: np.ndarray, spacing: tuple[float, float, float] = (2.5, 1.0, 1.0), seed: int = 0,
                 uid: str = "1.2.826.0.1.3680043.8.498.1", number: int = 3, desc: str = "AX FLAIR",
                 patient: bool = True, shuffle: bool = True, positions: bool = True,
                 monochrome1: bool = False) -> list[tuple[str, bytes]]:
    """A standard axial series (IOP 1,0,0,0,1,0) of ``slices_zhw`` (inferior first), one file per slice, with
    patient tags; file names carry no order and the list is shuffled."""
    dz, dr, dc = spacing
    files = []
    for k, img in enumerate(slices_zhw):
        ds = _dataset(img, uid, number, desc, patient)
        ds.PixelSpacing = [f"{dr:g}", f"{dc:g}"]
        ds.SliceThickness = f"{dz:g}"
        ds.InstanceNumber = k + 1
        if monochrome1:  # the same values stored inverted (low values bright)
            ds.PhotometricInterpretation = "MONOCHROME1"
            ds.PixelData = (65535 - np.clip(img, 0, 65535).astype(np.uint16)).astype(np.uint16).tobytes()
        if positions:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.ImagePositionPatient = ["-30", "-40", f"{-20 + k * dz:g}"]
        files.append(ds)
    order = np.random.default_rng(seed).permutation(len(files)) if shuffle else np.arange(len(files))
    return [(f"IM{int(i) * 7919 % 100003:06d}.dcm", _write(files[int(i)])) for i in order]


def localiser(size: int = 40, uid: str = "1.2.826.0.1.3680043.8.498.1") -> tuple[str, bytes]:
    """A sagittal scout of another size, in the same series (as some scanners store it)."""
    ds = _dataset(np.full((size, size), 300.0), uid, 3, "AX FLAIR", True)
    ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = ["2", "2"], "5", 99
    ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    ds.ImagePositionPatient = ["0", "-60", "60"]
    return "SCOUT.dcm", _write(ds)


def enhanced_mr(slices_zhw: np.ndarray, spacing: tuple[float, float, float] = (2.5, 1.0, 1.0),
                shuffle_frames: bool = True) -> bytes:
    """One multi-frame Enhanced MR file of ``slices_zhw``, frames stored out of order, geometry per frame."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedMRImageStorage

    dz, dr, dc = spacing
    order = np.random.default_rng(5).permutation(len(slices_zhw)) if shuffle_frames else np.arange(len(slices_zhw))
    stack = np.stack([slices_zhw[i] for i in order])
    ds = _dataset(stack[0], "1.2.826.0.1.3680043.8.498.77", 7, "ENHANCED T1", True)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.NumberOfFrames = len(stack)
    ds.PixelData = np.clip(stack, 0, 65535).astype(np.uint16).tobytes()
    shared = Dataset()
    ori, meas = Dataset(), Dataset()
    ori.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    meas.PixelSpacing, meas.SliceThickness = [f"{dr:g}", f"{dc:g}"], f"{dz:g}"
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([ori]), Sequence([meas])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for i in order:
        fg, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = ["-30", "-40", f"{-20 + int(i) * dz:g}"]
        fg.PlanePositionSequence = Sequence([pos])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return _write(ds)


def zip_bytes(files: list[tuple[str, bytes]], folder: str = "study") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zf.writestr(f"{folder}/{name}", data)
    return buf.getvalue()
