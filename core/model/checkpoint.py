"""Checkpoint I/O: safetensors weights + a JSON model card, verified by SHA-256.

Layout of a model folder (``weights/`` ships one)::

    model.safetensors   tensors only (no pickle): state dict + OOD statistics
    model_card.json     class names, input spec, architecture, calibration, OOD
                        threshold, training provenance, headline metrics, intended
                        use, and the SHA-256 of model.safetensors
    metrics.json        full evaluation written by train.py (dashboard metrics page)
    data_audit.json     the data audit report

Loading refuses a weights file whose SHA-256 differs from the card's (``core.model.integrity``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors, save_file

from core.paths import WEIGHTS_DIR
from core.errors import CheckpointError
from core.model.architectures import Classifier, build_model
from core.model.card import ModelCard, WeightsRecord
from core.model.integrity import read_verified, sha256_file
from core.inference.ood import MahalanobisOOD
from core.preprocess import PreprocessSpec
from core.model.tta import check_tta

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
METRICS_FILE = "metrics.json"
AUDIT_FILE = "data_audit.json"
DEFAULT_MODEL_DIR = WEIGHTS_DIR
DEFAULT_MODEL_NAME = "brain-mri-slice-classifier"  # the default (cross-source) model's card name
_OOD_PREFIX = "ood."


@dataclass
class ModelBundle:
    """Everything needed to serve a model; built by :func:`load_bundle`."""

    model: Classifier  # on CPU, eval mode
    card: ModelCard  # the one record of the input contract, classes and calibration (read through below)
    ood: MahalanobisOOD | None
    sha256: str

    @property
    def spec(self) -> PreprocessSpec:
        """The input contract (``card.input_spec``): the preprocessing every input of this model goes through."""
        return self.card.input_spec

    @property
    def class_names(self) -> list[str]:
        """Class names in model output order (``card.class_names``)."""
        return self.card.class_names

    @property
    def temperature(self) -> float:
        """Softmax temperature (``card.calibration.temperature``; 1 on a card without calibration)."""
        return float(self.card.calibration.temperature)

    @property
    def version(self) -> str:
        return "unknown" if self.card.version is None else str(self.card.version)

    @property
    def name(self) -> str:
        return "model" if self.card.name is None else str(self.card.name)

    @property
    def identity(self) -> dict:
        """What decides this model's outputs: see :attr:`ModelCard.identity`."""
        return self.card.identity

    @property
    def tta(self) -> str:
        """Test-time augmentation the model was calibrated and evaluated with (``core.model.tta``); cards
        written before the field existed mean "none"."""
        return str(self.card.inference.tta)


def save_weights(folder: str | Path, model: Classifier, ood: MahalanobisOOD | None = None) -> WeightsRecord:
    """Write ``model.safetensors`` (float32 state dict + OOD statistics) into ``folder``; returns the card's
    ``weights`` record: file name, size and SHA-256."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ood is not None:
        tensors[_OOD_PREFIX + "means"] = ood.means.cpu().contiguous()
        tensors[_OOD_PREFIX + "precision"] = ood.precision.cpu().contiguous()
    wpath = folder / WEIGHTS_FILE
    save_file(tensors, str(wpath), metadata={"format": "pt"})
    return WeightsRecord(file=WEIGHTS_FILE, bytes=wpath.stat().st_size, sha256=sha256_file(wpath))


def write_card(folder: str | Path, card: ModelCard) -> None:
    """Write ``model_card.json`` (indented JSON, keys in the card's order)."""
    (Path(folder) / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2))


def save_bundle(folder: str | Path, model: Classifier, card: ModelCard,
                ood: MahalanobisOOD | None = None) -> ModelCard:
    """Write weights and card; the card is returned as written, its ``weights`` record filled in."""
    card = replace(card, weights=save_weights(folder, model, ood))
    write_card(folder, card)
    return card


def read_card(folder: str | Path = DEFAULT_MODEL_DIR) -> ModelCard:
    """The card of a model folder; :class:`CheckpointError` when it is missing, not JSON or malformed."""
    path = Path(folder) / CARD_FILE
    try:
        return ModelCard.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"model card not found: {path}. Train a model with train.py first.") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"model card {path} is not valid JSON ({exc})") from None
    except (TypeError, AttributeError) as exc:
        raise CheckpointError(f"model card {path} is malformed ({exc})") from None
    except ValueError as exc:
        raise CheckpointError(f"model card {path}: {exc}") from None


def _missing_field(card: ModelCard) -> str | None:
    """The first field :func:`load_bundle` needs that the card lacks, or None."""
    if card.weights.file is None or card.weights.sha256 is None:
        return "weights"
    if not card.architecture.name:
        return "architecture"
    if not card.class_names:
        return "class_names"
    return "input_spec" if card.input_spec is None else None


def load_bundle(folder: str | Path = DEFAULT_MODEL_DIR, card: ModelCard | None = None) -> ModelBundle:
    """Load and verify a model folder. Raises :class:`CheckpointError` with a clear reason.

    The weights file's SHA-256 must equal the card's; tensors are read with safetensors, which executes no code.
    ``card`` replaces the folder's card (train.py evaluates its saved weights before the card is final).
    """
    folder = Path(folder)
    card = read_card(folder) if card is None else card
    missing = _missing_field(card)
    if missing is not None:
        raise CheckpointError(f"model card {folder / CARD_FILE} is missing field '{missing}'")
    try:
        check_tta(str(card.inference.tta))
    except ValueError as exc:
        raise CheckpointError(f"model card {folder / CARD_FILE}: {exc}") from None
    wfile, expected, arch = folder / card.weights.file, card.weights.sha256, card.architecture
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
                             float(card.ood.threshold))
    try:
        model = build_model(arch.name, card.input_spec.channels, len(card.class_names), cam_layer=arch.cam_layer)
    except ValueError as exc:
        raise CheckpointError(f"model card {folder / CARD_FILE}: {exc}") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not match architecture {arch.name!r}: {exc}") from None
    model.eval()
    return ModelBundle(model, card, ood, expected)
