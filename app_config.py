"""Settings of the Streamlit dashboard (not of the model).

Sources, later ones win:
  1. built-in defaults (below);
  2. a TOML file: ``$MRI_APP_CONFIG``, else ``mri_app.toml`` in the repository root if present;
  3. environment variables.

=====================  ==========================  ===========================================
setting                TOML key                    environment variable
=====================  ==========================  ===========================================
model folder           ``weights_dir``             ``MRI_WEIGHTS_DIR`` (default: ``weights/``)
browsable folders      ``allowed_roots`` (list)    ``MRI_ALLOWED_ROOTS`` (``os.pathsep``-joined;
                                                   default: the current directory)
app data (audit DB)    ``data_dir``                ``MRI_APP_DATA`` (default: ``data/``)
compute device         ``device``                  ``MRI_DEVICE`` (auto, cpu, cuda, mps)
inference precision    ``precision``               ``MRI_PRECISION`` (auto default; fp32, amp, bf16, fp16, int8)
labelled dataset       ``dataset_root``            ``MRI_DATA_ROOT`` (misclassified gallery)
uncertainty threshold  ``uncertain_below``         ``MRI_UNCERTAIN_BELOW`` (default 0.6)
gallery page size      ``gallery_page_size``       ``MRI_GALLERY_PAGE_SIZE`` (default 24)
batch reviews at once  ``max_batch_jobs``          ``MRI_MAX_BATCH_JOBS`` (default 2, whole server)
PACS (DICOMweb) URL    ``pacs_url``                ``MRI_PACS_URL`` (unset: no PACS; see core/pacs/client.py)
PACS user / password   ``pacs_user``,              ``MRI_PACS_USER``, ``MRI_PACS_PASSWORD`` (basic auth)
                       ``pacs_password``
PACS bearer token      ``pacs_token``              ``MRI_PACS_TOKEN`` (wins over user/password)
PACS DICOMweb root     ``pacs_dicomweb_root``      ``MRI_PACS_DICOMWEB_ROOT`` (default /dicom-web)
PACS timeouts, retries ``pacs_connect_timeout``,   (TOML only; defaults 5 s, 30 s, 2 retries)
                       ``pacs_read_timeout``,
                       ``pacs_retries``
Ray cluster (batch)    ``ray_address``             ``MRI_RAY_ADDRESS`` (HEAD:6379; unset: batch reviews run
                                                   locally only; see README "Scaling out")
sign-in (PACS page)    ``auth_config``             ``MRI_AUTH_CONFIG``: streamlit-authenticator YAML with
                                                   bcrypt-hashed passwords (unset: the PACS page is closed)
=====================  ==========================  ===========================================

The upload size limit is Streamlit's own ``server.maxUploadSize`` in
``.streamlit/config.toml``; the app reads it from there and tells the user.
This module does not import streamlit.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # annotations only: the settings load before (and without) torch
    from core.model.card import ModelCard

REPO = Path(__file__).resolve().parent
CONFIG_FILE = REPO / "mri_app.toml"
AUDIT_DB_NAME = "audit.sqlite3"


class ConfigError(ValueError):
    """The app configuration is invalid. ``str(err)`` is user-facing."""


@dataclass(frozen=True)
class AppConfig:
    weights_dir: Path = REPO / "weights"
    allowed_roots: tuple[Path, ...] = field(default_factory=lambda: (Path.cwd(),))
    data_dir: Path = REPO / "data"
    device: str = "auto"
    # "auto" leaves the choice to the predictor (bf16 on CPUs with native bf16, else fp32;
    # mixed precision on GPUs); it never picks int8, whose shifted features make the
    # out-of-distribution score (calibrated on fp32 features) flag real slices.
    precision: str = "auto"
    dataset_root: Path | None = None
    uncertain_below: float = 0.6
    gallery_page_size: int = 24
    # Batch reviews run as background threads; each takes the model's CPU/GPU time, so the server
    # runs at most this many at once (one per browser session in any case).
    max_batch_jobs: int = 2
    # PACS over DICOMweb (core/pacs/client.py). Secrets are kept out of repr() so they never reach a log or page.
    pacs_url: str | None = None
    pacs_dicomweb_root: str = "/dicom-web"
    pacs_user: str | None = None
    pacs_password: str | None = field(default=None, repr=False)
    pacs_token: str | None = field(default=None, repr=False)
    pacs_connect_timeout: float = 5.0
    pacs_read_timeout: float = 30.0
    pacs_retries: int = 2
    # Sign-in for the PACS page (ui/auth.py): a streamlit-authenticator YAML file; None keeps that page closed.
    auth_config: Path | None = None
    # A Ray cluster the batch page may send a review to (core/review/ray_engine.py); None offers the local engine only.
    ray_address: str | None = None
    source: str = "defaults"  # where the settings came from, for display

    @property
    def audit_path(self) -> Path:
        return self.data_dir / AUDIT_DB_NAME

    def dataset_candidates(self, metrics: Mapping | None = None, card: ModelCard | None = None) -> list[Path]:
        """Where the labelled dataset (with a ``Testing`` folder) may be, most specific first."""
        out: list[Path] = []
        if self.dataset_root is not None:
            out.append(self.dataset_root)
        if metrics and metrics.get("dataset_root"):
            out.append(Path(str(metrics["dataset_root"])))
        if card is not None and card.training.data_root:
            root = Path(str(card.training.data_root))
            out.append(root if root.is_absolute() else REPO / root)
        out.append(REPO.parent / "shared" / "data" / "brain-tumor-mri")
        seen, unique = set(), []
        for p in out:
            if str(p) not in seen:
                seen.add(str(p))
                unique.append(p)
        return unique


def _paths(value, base: Path) -> tuple[Path, ...]:
    items = value.split(os.pathsep) if isinstance(value, str) else list(value)
    out = []
    for item in items:
        item = str(item).strip()
        if item:
            p = Path(os.path.expanduser(item))
            out.append(p if p.is_absolute() else (base / p))
    return tuple(out)


# Numeric settings and their allowed range: (key, type, lowest, highest, unit in the message).
BOUNDED = (("uncertain_below", float, 0, 1, ""), ("gallery_page_size", int, 1, 200, ""),
           ("pacs_connect_timeout", float, 0.1, 600, " seconds"), ("pacs_read_timeout", float, 0.1, 3600, " seconds"),
           ("pacs_retries", int, 0, 10, ""), ("max_batch_jobs", int, 1, 64, ""))


def load_config(env: Mapping[str, str] | None = None, config_file: str | os.PathLike | None = None) -> AppConfig:
    """Build the :class:`AppConfig` from defaults, the TOML file and the environment."""
    env = os.environ if env is None else env
    values: dict = {}
    sources = ["defaults"]
    path = Path(config_file) if config_file else Path(env.get("MRI_APP_CONFIG", CONFIG_FILE))
    if path.is_file():
        try:
            values.update(tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"app config {path} cannot be read: {exc}") from None
        sources.append(str(path))
    elif env.get("MRI_APP_CONFIG"):
        raise ConfigError(f"app config {path} (from MRI_APP_CONFIG) does not exist")
    env_map = {"MRI_WEIGHTS_DIR": "weights_dir", "MRI_ALLOWED_ROOTS": "allowed_roots", "MRI_APP_DATA": "data_dir",
               "MRI_DEVICE": "device", "MRI_PRECISION": "precision", "MRI_DATA_ROOT": "dataset_root", "MRI_UNCERTAIN_BELOW": "uncertain_below",
               "MRI_GALLERY_PAGE_SIZE": "gallery_page_size", "MRI_MAX_BATCH_JOBS": "max_batch_jobs",
               "MRI_PACS_URL": "pacs_url", "MRI_PACS_USER": "pacs_user", "MRI_PACS_PASSWORD": "pacs_password",
               "MRI_PACS_TOKEN": "pacs_token", "MRI_PACS_DICOMWEB_ROOT": "pacs_dicomweb_root",
               "MRI_RAY_ADDRESS": "ray_address",
               "MRI_AUTH_CONFIG": "auth_config"}
    for var, key in env_map.items():
        if env.get(var):
            values[key] = env[var]
            sources.append(var)
    base = path.parent if path.is_file() else Path.cwd()
    kwargs: dict = {"source": ", ".join(sources)}
    try:
        if "weights_dir" in values:
            kwargs["weights_dir"] = _paths([values["weights_dir"]], base)[0]
        if "allowed_roots" in values:
            roots = _paths(values["allowed_roots"], base)
            if not roots:
                raise ConfigError("allowed_roots is empty; give at least one folder")
            kwargs["allowed_roots"] = roots
        if "data_dir" in values:
            kwargs["data_dir"] = _paths([values["data_dir"]], base)[0]
        if "dataset_root" in values:
            kwargs["dataset_root"] = _paths([values["dataset_root"]], base)[0]
        if "auth_config" in values:
            kwargs["auth_config"] = _paths([values["auth_config"]], base)[0]
        if "device" in values:
            kwargs["device"] = str(values["device"]).strip().lower() or "auto"
        if "precision" in values:
            kwargs["precision"] = str(values["precision"]).strip().lower() or "auto"
        if "ray_address" in values:
            kwargs["ray_address"] = str(values["ray_address"]).strip() or None
        for key in ("pacs_url", "pacs_user", "pacs_password", "pacs_token", "pacs_dicomweb_root"):
            if key in values:
                # A secret is taken as given (a space can be part of a password); names and paths are trimmed.
                text = str(values[key]) if key in ("pacs_password", "pacs_token") else str(values[key]).strip()
                kwargs[key] = text or (None if key != "pacs_dicomweb_root" else "/")
        for key, cast, low, high, unit in BOUNDED:
            if key in values:
                kwargs[key] = cast(values[key])
                if not low <= kwargs[key] <= high:
                    raise ConfigError(f"{key} must be between {low} and {high}{unit}")
    except (TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid app setting: {exc}") from None
    return AppConfig(**kwargs)
