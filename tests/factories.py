"""Builders for bad and unusual inputs, shared by the hardening tests.

Everything is generated in memory from a seed; nothing resembles patient data except
the deliberately planted fake identifiers in :data:`FAKE_PATIENT` (used to prove they
never reach the audit trail).
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

FAKE_PATIENT = {"PatientName": "Zqxwv^Jolyon", "PatientID": "PID-Q7741", "PatientBirthDate": "19610407",
                "InstitutionName": "Grimsby Nowhere Clinic", "ReferringPhysicianName": "Ykmp^Hester",
                "AccessionNumber": "ACC-90210"}


def encode(arr: np.ndarray | Image.Image, fmt: str, **kw) -> bytes:
    """Image bytes of an array (or PIL image) in ``fmt`` ("PNG", "JPEG", "TIFF", "BMP")."""
    im = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A ~100-byte PNG whose header claims ``width`` x ``height`` 8-bit grey pixels."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + _png_chunk(b"IEND", b""))


def jpeg_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small real JPEG with its SOF0 frame header patched to claim ``width`` x ``height``."""
    data = bytearray(encode(np.zeros((64, 64), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small BMP whose header claims ``width`` x ``height``."""
    data = bytearray(encode(np.zeros((64, 64), np.uint8), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def mr_dataset(filename: str = "synthetic.dcm", transfer_syntax=ExplicitVRLittleEndian) -> FileDataset:
    """An empty MR image dataset with its file meta and a fresh SOP Instance UID (the caller adds the rest)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(filename, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    return ds


def dicom_bytes(pixels: np.ndarray | None, *, transfer_syntax=ExplicitVRLittleEndian, frames: int | None = None,
                encapsulated: bytes | None = None, float_pixels: bool = False, rows_cols: tuple[int, int] | None = None,
                patient: dict | None = None, **tags) -> bytes:
    """A DICOM Part 10 MR slice.

    Args:
        pixels: uint16 (H, W) or (F, H, W); None for a DICOM without any pixel data.
        transfer_syntax: the file's transfer syntax; with a compressed one pass ``encapsulated``.
        frames: NumberOfFrames for multi-frame data.
        encapsulated: raw codestream bytes, stored encapsulated (compressed pixel data).
        float_pixels: store ``pixels`` (float32) as FloatPixelData (32-bit float, may hold NaN/inf).
        rows_cols: override Rows/Columns (for a header that lies about the size).
        patient: identifying tags to plant (default :data:`FAKE_PATIENT`).
        tags: any further DICOM keywords, e.g. ``RescaleSlope="2"``.
    """
    ds = mr_dataset("synthetic.dcm", transfer_syntax)
    ds.Modality, ds.SeriesDescription = "MR", "T1 AX POST"
    for k, v in (FAKE_PATIENT if patient is None else patient).items():
        setattr(ds, k, v)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if pixels is not None or rows_cols is not None:
        ds.Rows, ds.Columns = rows_cols or pixels.shape[-2:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames:
        ds.NumberOfFrames = frames
    if encapsulated is not None:
        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
    elif float_pixels:
        ds.BitsAllocated = 32
        del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
        ds.FloatPixelData = np.asarray(pixels, np.float32).tobytes()
    elif pixels is not None:
        ds.PixelData = np.asarray(pixels, np.uint16).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
