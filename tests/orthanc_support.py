"""A real Orthanc PACS for tests and for trying the app (``make pacs``).

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages; each :class:`OrthancServer` gets a generated
config in a temporary folder: a free localhost HTTP port, no DICOM (DIMSE) port, its own storage and
index folders, the DICOMweb plugin at ``/dicom-web/``, remote access off and HTTP basic authentication
on with a generated user and password. Tests skip (with the reason) when the binary or plugin is absent.

``python -m tests.orthanc_support [--load N]`` starts one for a person and prints its URL and credentials.
"""
from __future__ import annotations

import io
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

# Debian puts the server in /usr/sbin (not on a normal user's PATH) and the plugin under /usr/share.
BINARY_CANDIDATES = ("Orthanc", "/usr/sbin/Orthanc", "/usr/local/sbin/Orthanc", "/usr/local/bin/Orthanc")
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so",
                     "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb"


def find_orthanc() -> tuple[str | None, str | None]:
    """(server binary, DICOMweb plugin .so), each None when not installed."""
    binary = next((p for p in (shutil.which(c) or (c if Path(c).is_file() else None) for c in BINARY_CANDIDATES)
                   if p), None)
    plugin = next((p for p in PLUGIN_CANDIDATES if Path(p).is_file()), None)
    return binary, plugin


def missing_reason() -> str | None:
    """Why a real Orthanc cannot be started here, or None when it can."""
    binary, plugin = find_orthanc()
    if binary is None:
        return f"Orthanc is not installed ({INSTALL_HINT})"
    if plugin is None:
        return f"the Orthanc DICOMweb plugin is not installed ({INSTALL_HINT})"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancServer:
    """One Orthanc process with its own config, storage and generated credentials."""

    workdir: Path
    user: str = "mri"
    password: str = ""
    port: int = 0
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.password = self.password or secrets.token_urlsafe(16)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def write_config(self) -> Path:
        _, plugin = find_orthanc()
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "mri-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "DicomServerEnabled": False,  # DICOMweb only: no DIMSE port to collide with
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False,
            "SaveJobs": False,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(cfg, indent=2))
        path.chmod(0o600)  # it holds the generated password
        return path

    def start(self, timeout: float = 20.0) -> OrthancServer:
        """Start Orthanc and wait until ``/system`` and the DICOMweb root answer (a few ports tried)."""
        reason = missing_reason()
        if reason:
            raise RuntimeError(reason)
        binary, _ = find_orthanc()
        last = ""
        for _attempt in range(3):  # the free port can be taken between choosing and binding it
            self.port = free_port()
            config = self.write_config()
            with open(self.workdir / "orthanc.log", "ab") as log:  # the child keeps its own copy of the handle
                self.proc = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.workdir)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    r = requests.get(f"{self.url}/dicom-web/studies", auth=self.auth, timeout=1)
                    if r.status_code == 200:
                        return self
                    last = f"HTTP {r.status_code}"
                except requests.RequestException as exc:
                    last = type(exc).__name__
                time.sleep(0.1)
            self.stop()
        tail = (self.workdir / "orthanc.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Orthanc did not start ({last}); log tail:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    # --- Orthanc's own REST API (tests only: upload fixtures, delete a series behind the client's back) ---
    def upload(self, data: bytes) -> dict:
        r = requests.post(f"{self.url}/instances", data=data, auth=self.auth, timeout=10)
        r.raise_for_status()
        return r.json()

    def delete_series(self, series_uid: str) -> None:
        r = requests.post(f"{self.url}/tools/lookup", data=series_uid, auth=self.auth, timeout=10)
        r.raise_for_status()
        ids = [x["ID"] for x in r.json() if x.get("Type") == "Series"]
        assert ids, f"series {series_uid} not in Orthanc"
        for oid in ids:
            requests.delete(f"{self.url}/series/{oid}", auth=self.auth, timeout=10).raise_for_status()

    def count_instances(self) -> int:
        r = requests.get(f"{self.url}/statistics", auth=self.auth, timeout=10)
        r.raise_for_status()
        return int(r.json()["CountInstances"])


def mr_series(n_slices: int = 4, size: int = 64, patient_id: str = "TEST-PAT-1", seed: int = 0,
              study_uid: str | None = None, patient_name: str = "Test^Patient", birth_date: str = "19700101",
              volume: np.ndarray | None = None) -> list:
    """A synthetic axial MR series as pydicom datasets (patient, study, geometry tags set), one head per slice."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    from core.data.synthetic import fake_scan

    rng = np.random.default_rng(seed)
    if volume is not None:
        n_slices = len(volume)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    out = []
    for i in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(f"{i}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.PatientBirthDate, ds.PatientSex = birth_date, "F"
        ds.PatientAge, ds.PatientWeight = "056Y", "70"
        ds.OtherPatientIDs = "OTHER-ID-9"
        ds.InstitutionName, ds.OperatorsName = "General Hospital", "Tech^One"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20261130", "101500", "42"
        ds.AccessionNumber, ds.ReferringPhysicianName = "ACC-0001", "Ref^Doctor"
        ds.StudyDescription, ds.SeriesDescription = "MR BRAIN", "T1 AX"
        ds.Modality, ds.Manufacturer = "MR", "Synthetic"
        ds.SeriesNumber, ds.InstanceNumber = 3, i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(5 * i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 5.0
        # ``volume``: (slices, rows, cols) stored values, slice 0 the most inferior; else synthetic heads.
        img = (np.clip(volume[i], 0, 65535).astype(np.uint16) if volume is not None
               else fake_scan(rng, size, i % 4).astype(np.uint16) * 16)
        ds.Rows, ds.Columns = img.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        bits = 16 if volume is not None else 12  # a real volume may use the full 16 bits
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.PixelData = img.tobytes()
        out.append(ds)
    return out


READER, READER_PASSWORD = "reader", "Reader-pass-1"  # the test sign-in (bcrypt-hashed in the YAML file)


def write_auth_config(path: Path, users: dict[str, str] | None = None) -> Path:
    """A streamlit-authenticator YAML file (``MRI_AUTH_CONFIG``) with bcrypt-hashed passwords for ``users``
    (login name -> password; default the one test reader)."""
    import yaml
    from streamlit_authenticator.utilities import Hasher

    users = users or {READER: READER_PASSWORD}
    data = {"credentials": {"usernames": {u: {"name": f"Test {u}", "password": Hasher.hash(pw)}
                                          for u, pw in users.items()}}}
    path = Path(path)
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def pacs_env(server: OrthancServer) -> dict[str, str]:
    """The app's ``MRI_PACS_*`` settings for ``server``."""
    return {"MRI_PACS_URL": server.url, "MRI_PACS_USER": server.user, "MRI_PACS_PASSWORD": server.password}


def to_bytes(ds) -> bytes:
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


VOLUMES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "volumes"


def demo_volume(path: Path) -> np.ndarray:
    """A NIfTI volume's axial slices (slices, rows, cols), inferior first, scaled to 12-bit values, for upload."""
    from core.io.read_series import read_paths
    from tests.study_support import display_slices

    vol = display_slices(read_paths([path])[0].series.volume).astype(np.float32)
    return vol / max(float(vol.max()), 1.0) * 4000.0


def main(argv: list[str] | None = None) -> int:
    """``make pacs``: one Orthanc for a person, until Ctrl-C."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", type=int, default=2, help="MR studies to upload (default 2): FLAIR volumes of "
                    "../shared/data/volumes when present, else synthetic series")
    args = ap.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="mri-pacs-"))
    server = OrthancServer(workdir).start()
    try:
        volumes = sorted(VOLUMES.glob("*/*/flair.nii.gz"))[:args.load]  # real series when ../shared has them
        for k in range(args.load):
            volume = demo_volume(volumes[k]) if k < len(volumes) else None
            for ds in mr_series(n_slices=8, size=128, patient_id=f"DEMO-{k + 1}", seed=k, volume=volume,
                                patient_name=f"Demo^Patient{k + 1}"):
                server.upload(to_bytes(ds))
        reader_password = secrets.token_urlsafe(12)
        users = write_auth_config(workdir / "users.yaml", {READER: reader_password})
        print(f"Orthanc: {server.url}  (DICOMweb root /dicom-web)\nuser: {server.user}\npassword: {server.password}\n"
              f"config and storage: {workdir}\n\nFor the app:\n  export MRI_PACS_URL={server.url}\n"
              f"  export MRI_PACS_USER={server.user}\n  export MRI_PACS_PASSWORD={server.password}\n"
              f"  export MRI_AUTH_CONFIG={users}\nSign in to the PACS page as {READER} / {reader_password}; "
              f"search patient IDs DEMO-1 ... DEMO-{args.load}.\n\nCtrl-C stops it.", flush=True)
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


class CuttingProxy:
    """A localhost TCP proxy to ``port`` that drops every connection after ``limit`` response bytes.

    Stands in for a PACS that dies in the middle of sending a series: a real Orthanc hands a small series
    to the kernel before the client has read the first instance, so killing it then does not cut anything."""

    def __init__(self, port: int, limit: int) -> None:
        import threading

        self.target, self.limit, self.connections = port, limit, 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import threading

        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        import select

        upstream = socket.create_connection(("127.0.0.1", self.target))
        sent = 0
        try:
            while sent < self.limit and not self._stop.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client:
                        upstream.sendall(data)
                    else:
                        data = data[: self.limit - sent]
                        client.sendall(data)
                        sent += len(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
