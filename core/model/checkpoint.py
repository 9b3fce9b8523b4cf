"""Checkpoint I/O: safetensors weights + a JSON model card, verified by SHA-256.

Layout of a model folder (``weights/`` ships one)::

    model.safetensors   tensors only (no pickle): state dict + OOD statistics
    model_card.json     class names, input spec, architecture, calibration, OOD
                        threshold, training provenance, headline metrics, intended
                        use, and the SHA-256 of model.safetensors
    metrics.json        full evaluation written by train.py (dashboard metrics page)
    data_audit.json     the data audit report

Loading refuses a weights file whose SHA-256 differs from the card's.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors, save_file

from core.errors import CheckpointError
from core.model.architectures import Classifier, build_model
from core.inference.ood import MahalanobisOOD
from core.preprocess import PreprocessSpec
from core.model.tta import check_tta

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
METRICS_FILE = "metrics.json"
AUDIT_FILE = "data_audit.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_MODEL_NAME = "brain-mri-slice-classifier"  # the default (cross-source) model's card name
INTENDED_USE = ("Research use only, not for diagnosis. Classifies single 2-D brain MRI slices into "
                "the trained classes to support research and review; not a medical device, not "
                "validated for clinical decisions.")
_OOD_PREFIX = "ood."


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified(path: Path, expected_sha256: str, what: str, source: str,
                  error: type[Exception] = CheckpointError) -> bytes:
    """The bytes of ``path``, refused with ``error`` unless their SHA-256 is ``expected_sha256``.

    Read once, then hashed and parsed from the same bytes: the file cannot be swapped in between. ``what``
    names the file and ``source`` where the expected hash comes from, in the message.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{what} {path.name} cannot be read ({exc.strerror or exc})") from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected_sha256:
        raise error(f"{what} {path.name} failed its integrity check: SHA-256 is {actual[:12]}…, {source} expects "
                    f"{expected_sha256[:12]}…. The file was modified or truncated; refusing to load it.")
    return raw


@dataclass
class ModelBundle:
    """Everything needed to serve a model; built by :func:`load_bundle`."""

    model: Classifier  # on CPU, eval mode
    card: dict
    spec: PreprocessSpec
    class_names: list[str]
    temperature: float
    ood: MahalanobisOOD | None
    sha256: str

    @property
    def version(self) -> str:
        return str(self.card.get("version", "unknown"))

    @property
    def name(self) -> str:
        return str(self.card.get("name", "model"))

    @property
    def identity(self) -> dict:
        """What decides this model's outputs: see :func:`model_identity`."""
        return model_identity(self.card)

    @property
    def tta(self) -> str:
        """Test-time augmentation the model was calibrated and evaluated with (``core.model.tta``); cards
        written before the field existed mean "none"."""
        return str(self.identity["tta"])


def kept_validation(training: dict) -> dict:
    """The validation figures of the weights a card's ``training`` record kept: the row of the chosen epoch in
    ``history``, for the raw or the averaged (EMA) weights, with the ``ema_`` prefix removed (so ``score`` is the
    selection score). A re-fit (``--epochs 0``) keeps its parent's weights and reports the figures recorded in
    ``init_from``. ``{}`` when nothing was recorded."""
    if not training.get("epochs_run"):
        return (training.get("init_from") or {}).get("validation_scores") or {}
    history, best = training.get("history") or [], training.get("best_epoch") or 0
    if not 0 < best <= len(history):
        return {}
    ema = training.get("best_weights") == "ema"
    return {k.removeprefix("ema_"): v for k, v in history[best - 1].items() if k.startswith("ema_") == ema}


def model_identity(card: dict) -> dict:
    """{"sha256", "version", "tta"} of a model card.

    The weights' SHA-256 alone does not identify a model's outputs: ``train.py --epochs 0``
    re-fits calibration and test-time augmentation for unchanged weights. A report made for
    a model (the stress test) records this and is shown only for an equal one.
    """
    return {"sha256": card.get("weights", {}).get("sha256"), "version": card.get("version"),
            "tta": card.get("inference", {}).get("tta", "none")}


def save_bundle(folder: str | Path, model: Classifier, card: dict, ood: MahalanobisOOD | None = None) -> dict:
    """Write weights and card; fills ``card['weights']`` with file name, size and SHA-256.

    Weights are stored in float32; the card is returned as written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ood is not None:
        tensors[_OOD_PREFIX + "means"] = ood.means.cpu().contiguous()
        tensors[_OOD_PREFIX + "precision"] = ood.precision.cpu().contiguous()
    wpath = folder / WEIGHTS_FILE
    save_file(tensors, str(wpath), metadata={"format": "pt"})
    card = dict(card)
    card["weights"] = {"file": WEIGHTS_FILE, "bytes": wpath.stat().st_size, "sha256": sha256_file(wpath)}
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2))
    return card


def read_card(folder: str | Path = DEFAULT_MODEL_DIR) -> dict:
    path = Path(folder) / CARD_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"model card not found: {path}. Train a model with train.py first.") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"model card {path} is not valid JSON ({exc})") from None


def load_bundle(folder: str | Path = DEFAULT_MODEL_DIR) -> ModelBundle:
    """Load and verify a model folder. Raises :class:`CheckpointError` with a clear reason.

    The weights file's SHA-256 must equal the card's; tensors are read with
    safetensors, which executes no code.
    """
    folder = Path(folder)
    card = read_card(folder)
    try:
        wfile = folder / card["weights"]["file"]
        expected = card["weights"]["sha256"]
        arch = card["architecture"]
        class_names = list(card["class_names"])
        spec = PreprocessSpec.from_dict(card["input_spec"])
        check_tta(str(model_identity(card)["tta"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"model card {folder / CARD_FILE} is missing field {exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"model card {folder / CARD_FILE}: {exc}") from None
    if not wfile.is_file():
        raise CheckpointError(f"weights file not found: {wfile}")
    raw = read_verified(wfile, expected, "weights file", "the model card", CheckpointError)
    try:
        tensors = load_safetensors(raw)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"weights file {wfile.name} cannot be read as safetensors ({exc})") from None
    del raw
    ood = None
    if _OOD_PREFIX + "means" in tensors:
        ood = MahalanobisOOD(tensors.pop(_OOD_PREFIX + "means"), tensors.pop(_OOD_PREFIX + "precision"),
                             float(card.get("ood", {}).get("threshold", float("inf"))))
    try:
        model = build_model(arch["name"], spec.channels, len(class_names), cam_layer=arch.get("cam_layer"))
    except ValueError as exc:
        raise CheckpointError(f"model card {folder / CARD_FILE}: {exc}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not match architecture {arch['name']!r}: {exc}") from None
    model.eval()
    temperature = float(card.get("calibration", {}).get("temperature", 1.0))
    return ModelBundle(model, card, spec, class_names, temperature, ood, expected)
