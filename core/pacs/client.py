"""DICOMweb client for a hospital PACS: search (QIDO-RS), retrieve (WADO-RS) and store (STOW-RS).

Built on ``dicomweb-client`` over a ``requests`` session. Rules every call follows:

- **Never a hang.** Every HTTP request has a connect timeout and a read timeout (the longest wait for the
  next bytes), from :class:`PacsConfig`.
- **Bounded retry.** A connection failure, a timeout or HTTP 429/502/503/504 is retried at most
  ``retries`` more times, waiting ``retry_backoff`` x 1, 2, 4 ... seconds between tries. Wrong credentials
  (401/403), a missing study or series (404) and other answers are not retried.
- **One error type.** Every failure is raised as :class:`PacsError` whose ``str()`` is a sentence for the
  user (what failed, where, how many tries); never a traceback from the HTTP stack.
- **Credentials stay secret.** The password or token lives only on the session's ``auth`` hook; it is not
  in the URL, in any message, in ``repr(config)``, or in the request headers the client library logs.

This module does not import streamlit.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)
T = TypeVar("T")


class _NoQueryStrings(logging.Filter):
    """QIDO-RS URLs carry the search filters (a patient ID) in their query string, and the HTTP stack logs URLs at
    DEBUG: its records keep the path only, so a debug log never holds a patient identifier."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = re.sub(r"\?[^\s'\"]*", "?<query>", message), ()
        return True


for _name in ("dicomweb_client.web", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_NoQueryStrings())

RETRYABLE_STATUS = (429, 502, 503, 504)


class PacsError(RuntimeError):
    """A PACS operation failed. ``str(err)`` is user-facing and never holds credentials.

    ``kind`` is one of ``config``, ``unreachable``, ``timeout``, ``auth``, ``not_found``, ``server``,
    ``rejected``, ``bad_response``, ``io``.
    """

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is and how to talk to it. Secrets are left out of ``repr``."""

    url: str  # scheme, host and port, e.g. "https://pacs.example.org:8443"
    dicomweb_root: str = "/dicom-web"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # bearer token; wins over user/password
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 2
    retry_backoff: float = 0.5

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError("the PACS URL must look like https://host[:port]", "config")
        if parts.username or parts.password:
            # A URL ends up in messages and logs; credentials inside it would leak with it.
            raise PacsError("put the PACS user and password in pacs_user / pacs_password, not in the URL", "config")
        if self.connect_timeout <= 0 or self.read_timeout <= 0 or self.retries < 0:
            raise PacsError("PACS timeouts must be positive and retries zero or more", "config")

    @property
    def endpoint(self) -> str:
        """The DICOMweb base URL (no credentials in it; safe to show)."""
        root = "/" + self.dicomweb_root.strip("/") if self.dicomweb_root.strip("/") else ""
        return self.url.rstrip("/") + root

    @property
    def auth_kind(self) -> str:
        return "bearer token" if self.token else ("basic" if self.user else "none")

    @property
    def policy(self) -> str:
        """The timeout and retry policy, in words (put in every error message)."""
        return (f"{1 + self.retries} tries, timeouts {self.connect_timeout:g} s to connect and "
                f"{self.read_timeout:g} s per read")

    @classmethod
    def from_app_config(cls, config) -> PacsConfig | None:
        """From :class:`app_config.AppConfig` (``pacs_*`` settings); None when no PACS is configured."""
        if not getattr(config, "pacs_url", None):
            return None
        return cls(url=config.pacs_url, dicomweb_root=config.pacs_dicomweb_root, user=config.pacs_user or None,
                   password=config.pacs_password or None, token=config.pacs_token or None,
                   connect_timeout=config.pacs_connect_timeout, read_timeout=config.pacs_read_timeout,
                   retries=config.pacs_retries)


@dataclass(frozen=True)
class StudyHit:
    """One study found by :func:`search_studies` (may hold patient identifiers: show, never store)."""

    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    accession: str
    description: str
    modalities: tuple[str, ...]
    n_series: int | None
    n_instances: int | None


@dataclass(frozen=True)
class SeriesHit:
    """One series of a study, found by :func:`search_series`."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    series_number: int | None
    n_instances: int | None


class _Bearer(requests.auth.AuthBase):
    """Adds the bearer token when a request is sent, so it is never in the session's logged headers."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r):
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:
        return "_Bearer(***)"


def _client(config: PacsConfig, session: requests.Session | None = None):
    from dicomweb_client.api import DICOMwebClient

    session = session or requests.Session()
    if config.token:
        session.auth = _Bearer(config.token)
    elif config.user:
        session.auth = requests.auth.HTTPBasicAuth(config.user, config.password or "")
    try:
        client = DICOMwebClient(url=config.endpoint, session=session,
                                timeout=(config.connect_timeout, config.read_timeout))
    except ValueError:  # the library's own URL check is stricter than ours (e.g. IPv6 literals)
        raise PacsError(f"the PACS URL {config.endpoint} is not supported by the DICOMweb client", "config") from None
    # Retries are ours (bounded, stated in messages, covering connection errors too), not the library's.
    client.set_http_retry_params(retry=False)
    return client


def _http_message(what: str, config: PacsConfig, status: int) -> PacsError:
    where = config.endpoint
    if status == 401:
        return PacsError(f"{what}: the PACS at {where} refused the credentials (HTTP 401); check pacs_user and "
                         f"pacs_password (or pacs_token)", "auth", status)
    if status == 403:
        return PacsError(f"{what}: the PACS at {where} denies this user access (HTTP 403)", "auth", status)
    if status == 404:
        return PacsError(f"{what}: not found on the PACS at {where} (HTTP 404); it may have been deleted, or "
                         f"the DICOMweb root '{config.dicomweb_root}' is wrong", "not_found", status)
    if status in RETRYABLE_STATUS:
        return PacsError(f"{what}: the PACS at {where} is busy or unavailable (HTTP {status}; {config.policy})",
                         "server", status)
    return PacsError(f"{what}: the PACS at {where} answered HTTP {status}", "server", status)


def _call(config: PacsConfig, what: str, fn: Callable[[], T], cleanup: Callable[[], None] | None = None) -> T:
    """Run ``fn`` with the bounded retry policy; every failure becomes a :class:`PacsError`.

    ``cleanup`` runs after every failed try (e.g. removes files a half-finished retrieve wrote)."""
    attempts = 1 + config.retries
    for attempt in range(1, attempts + 1):
        retry_error: PacsError | None = None
        try:
            return fn()
        except PacsError:
            if cleanup:
                cleanup()
            raise
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            err = _http_message(what, config, status)
            if status not in RETRYABLE_STATUS:
                if cleanup:
                    cleanup()
                raise err from None
            retry_error = err
        except requests.Timeout:
            retry_error = PacsError(f"{what}: the PACS at {config.endpoint} did not answer in time "
                                    f"({config.policy})", "timeout")
        except _CutOff:
            retry_error = PacsError(f"{what}: the PACS at {config.endpoint} dropped the connection before the "
                                    f"series was complete; nothing was kept ({config.policy})", "unreachable")
        except requests.ConnectionError as exc:
            # A read timeout in the middle of a streamed body arrives as a ConnectionError wrapping it.
            timed_out = "timed out" in str(exc).lower() or "timeout" in type(exc.__context__).__name__.lower()
            retry_error = (PacsError(f"{what}: the PACS at {config.endpoint} stopped answering ({config.policy})",
                                     "timeout") if timed_out else
                           PacsError(f"{what}: cannot reach the PACS at {config.endpoint} (connection refused or "
                                     f"dropped; {config.policy})", "unreachable"))
        except requests.RequestException as exc:  # broken chunked body, too many redirects, ...
            retry_error = PacsError(f"{what}: the connection to the PACS at {config.endpoint} failed "
                                    f"({type(exc).__name__}; {config.policy})", "unreachable")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if cleanup:
                cleanup()
            raise PacsError(f"{what}: the PACS at {config.endpoint} sent an answer that cannot be read "
                            f"({type(exc).__name__})", "bad_response") from None
        if cleanup:
            cleanup()
        if attempt < attempts:
            wait = config.retry_backoff * 2 ** (attempt - 1)
            log.warning("%s failed (%s), try %d of %d; retrying in %.1f s", what, retry_error.kind, attempt,
                        attempts, wait)
            time.sleep(wait)
        else:
            raise retry_error
    raise AssertionError("unreachable")  # pragma: no cover


def _date(value: dt.date | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.strftime("%Y%m%d")
    text = str(value).replace("-", "")
    if not re.fullmatch(r"\d{8}", text):
        raise PacsError(f"dates are YYYY-MM-DD or YYYYMMDD, not {value!r}", "config")
    return text


def _first(ds, keyword: str, default=""):
    """The (first) value of ``keyword`` in a QIDO answer, or ``default`` when absent or empty."""
    from pydicom.multival import MultiValue

    value = ds.get(keyword, None)
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    return default if value is None or value == "" else value


def _int(ds, keyword: str) -> int | None:
    try:
        return int(_first(ds, keyword, None))
    except (TypeError, ValueError):
        return None


def search_studies(config: PacsConfig, patient_id: str | None = None, date_from: dt.date | str | None = None,
                   date_to: dt.date | str | None = None, modality: str | None = None,
                   accession: str | None = None, limit: int = 100) -> list[StudyHit]:
    """QIDO-RS study search; every given filter must match (an omitted one matches all).

    ``date_from``/``date_to`` bound the study date (inclusive; either may be open). At most ``limit`` hits."""
    from pydicom import Dataset

    filters: dict[str, str] = {}
    if patient_id:
        filters["PatientID"] = patient_id
    if accession:
        filters["AccessionNumber"] = accession
    if modality:
        filters["ModalitiesInStudy"] = modality
    if date_from or date_to:
        filters["StudyDate"] = f"{_date(date_from)}-{_date(date_to)}"
    fields = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances", "PatientName"]
    client = _client(config)
    raw = _call(config, "Study search",
                lambda: client.search_for_studies(search_filters=filters, fields=fields, limit=limit))
    hits = []
    for item in raw:
        try:
            ds = Dataset.from_json(item)
        except Exception:  # noqa: BLE001 - one odd answer item should not hide the others
            log.warning("skipped a study search result that cannot be parsed")
            continue
        mods = ds.get("ModalitiesInStudy", [])
        mods = (mods,) if isinstance(mods, str) else tuple(str(m) for m in mods)
        hits.append(StudyHit(study_uid=str(_first(ds, "StudyInstanceUID")), patient_id=str(_first(ds, "PatientID")),
                             patient_name=str(_first(ds, "PatientName")), study_date=str(_first(ds, "StudyDate")),
                             accession=str(_first(ds, "AccessionNumber")),
                             description=str(_first(ds, "StudyDescription")), modalities=mods,
                             n_series=_int(ds, "NumberOfStudyRelatedSeries"),
                             n_instances=_int(ds, "NumberOfStudyRelatedInstances")))
    return [h for h in hits if h.study_uid]


def search_series(config: PacsConfig, study_uid: str, modality: str | None = None) -> list[SeriesHit]:
    """QIDO-RS: the series of one study (optionally one modality)."""
    from pydicom import Dataset

    filters = {"Modality": modality} if modality else {}
    client = _client(config)
    raw = _call(config, "Series search", lambda: client.search_for_series(
        study_instance_uid=study_uid, search_filters=filters,
        fields=["SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances"]))
    out = []
    for item in raw:
        ds = Dataset.from_json(item)
        out.append(SeriesHit(study_uid=study_uid, series_uid=str(_first(ds, "SeriesInstanceUID")),
                             modality=str(_first(ds, "Modality")), description=str(_first(ds, "SeriesDescription")),
                             series_number=_int(ds, "SeriesNumber"),
                             n_instances=_int(ds, "NumberOfSeriesRelatedInstances")))
    return [s for s in out if s.series_uid]


_SAFE_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class _CutOff(requests.ConnectionError):
    """The series' multipart body ended early (a dropped connection, retried like one)."""


class _TailWatch:
    """Keeps the last bytes of each streamed response body, to tell a complete multipart body from a cut one.

    dicomweb-client yields whatever it has when the connection ends; a PACS that dies mid-series (or a
    proxy that drops the connection) would otherwise hand us a short series with a truncated last file."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, bytearray]] = []

    def hook(self, response: requests.Response, *args, **kwargs) -> requests.Response:
        tail = bytearray()
        self.responses.append((response.headers.get("Content-Type", ""), tail))
        original = response.iter_content

        def iter_content(*a, **kw):
            for chunk in original(*a, **kw):
                tail.extend(chunk)
                del tail[:-512]
                yield chunk

        response.iter_content = iter_content
        return response

    def complete(self) -> bool:
        """Whether the last streamed multipart body ended with its closing boundary ``--<boundary>--``."""
        if not self.responses:
            return False
        content_type, tail = self.responses[-1]
        match = re.search(r'boundary="?([^";]+)"?', content_type)
        if not match:
            return True  # not multipart: nothing to check here
        return bytes(tail).rstrip().endswith(b"--" + match.group(1).encode() + b"--")


def retrieve_series(config: PacsConfig, study_uid: str, series_uid: str, dest_dir: str | os.PathLike) -> list[Path]:
    """WADO-RS: write every instance of a series to ``dest_dir`` as ``<SOPInstanceUID>.dcm``.

    Streamed: one instance is held in memory at a time (plus one network chunk). On failure the files this
    call wrote are removed, so a caller never sees half a series; a retry starts the series again."""
    import pydicom

    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def cleanup() -> None:
        for p in written:
            p.unlink(missing_ok=True)
        written.clear()

    def run() -> list[Path]:
        watch = _TailWatch()
        session = requests.Session()
        session.hooks["response"].append(watch.hook)
        client = _client(config, session)
        for i, ds in enumerate(client.iter_series(study_uid, series_uid)):
            sop = str(ds.get("SOPInstanceUID", ""))
            # The name comes from the PACS: only a plain UID may become a file name (no "../").
            name = f"{sop}.dcm" if _SAFE_UID.fullmatch(sop) and len(sop) <= 64 else f"instance-{i:05d}.dcm"
            path = dest / name
            tmp = path.with_suffix(".part")
            try:
                pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
                tmp.replace(path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise PacsError(f"Series retrieve: cannot write to {dest} ({exc.strerror or exc})", "io") from None
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a malformed instance
                tmp.unlink(missing_ok=True)
                raise PacsError(f"Series retrieve: the PACS at {config.endpoint} sent an instance that cannot be "
                                f"written as DICOM ({type(exc).__name__})", "bad_response") from None
            written.append(path)
        if not written:
            raise PacsError(f"Series retrieve: the series has no instances on the PACS at {config.endpoint}; it may "
                            f"have been deleted", "not_found")
        if not watch.complete():
            # Raised as a dropped connection so that it is retried like one.
            raise _CutOff("multipart body ended before its closing boundary")
        return list(written)

    return _call(config, "Series retrieve", run, cleanup=cleanup)


def store(config: PacsConfig, datasets: Sequence | Iterable) -> list[str]:
    """STOW-RS: store the datasets; returns the SOP Instance UIDs the PACS accepted.

    Raises :class:`PacsError` when any instance was refused (the message says how many). Storing the same
    instances again is harmless (same SOP Instance UIDs), which is what makes a retry safe."""
    datasets = list(datasets)
    if not datasets:
        return []
    client = _client(config)
    response = _call(config, "Store", lambda: client.store_instances(datasets))
    failed = list(getattr(response, "FailedSOPSequence", []) or []) if response is not None else []
    stored = [str(item.ReferencedSOPInstanceUID) for item in
              (getattr(response, "ReferencedSOPSequence", []) or [])] if response is not None else []
    if failed:
        reasons = sorted({str(getattr(item, "FailureReason", "?")) for item in failed})
        raise PacsError(f"Store: the PACS at {config.endpoint} refused {len(failed)} of {len(datasets)} instances "
                        f"(failure reason {', '.join(reasons)}); {len(stored)} stored", "rejected")
    if not stored:  # some servers answer 200 with an empty body; trust what was sent
        stored = [str(ds.SOPInstanceUID) for ds in datasets]
    return stored
