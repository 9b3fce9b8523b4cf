"""The shipped models: one bundle per folder, found by reading model cards only (no weights are loaded).

Layout (old paths keep working)::

    weights/                  the default model's bundle (model.safetensors, model_card.json, metrics.json, ...)
    weights/<model-name>/     one more bundle per further model, e.g. weights/feltrin44/

``MRI_WEIGHTS_DIR``, ``python -m core.batch --weights`` and ``python -m core.evaluate --weights`` still name one bundle folder;
``--model NAME`` and the dashboard's model picker choose among the bundles of a registry folder.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from core.model.card import ModelCard
from core.model.checkpoint import CARD_FILE, DEFAULT_MODEL_DIR


@dataclass(frozen=True)
class ModelEntry:
    """One bundle of a registry, described from its card."""

    path: Path  # the bundle folder
    name: str  # card name (what --model and the picker use)
    version: str
    class_names: tuple[str, ...]
    sha256: str  # of the weights file, as the card records it (checked again at load)
    intended_use: str
    default: bool  # the registry folder's own bundle

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]

    @property
    def label(self) -> str:
        """One line for a picker: name, version, number of classes and short SHA."""
        return f"{self.name} {self.version} · {len(self.class_names)} classes · {self.short_sha}"


def _entry(folder: Path, default: bool) -> ModelEntry | None:
    try:
        raw = json.loads((folder / CARD_FILE).read_text())
        card = ModelCard.from_dict(raw) if isinstance(raw, dict) else None
    except (OSError, ValueError, TypeError, AttributeError):  # no card, not JSON, or malformed
        return None
    if card is None or not card.class_names:
        return None
    return ModelEntry(folder, folder.name if card.name is None else str(card.name),
                      "unknown" if card.version is None else str(card.version), tuple(map(str, card.class_names)),
                      str(card.weights.sha256 or ""), str(card.intended_use or ""), default)


def list_models(root: str | Path) -> list[ModelEntry]:
    """The bundles of a registry folder: ``root`` itself first (the default), then each sub-folder holding a
    model card, by name. A folder without a readable card is skipped; loading checks each bundle fully."""
    root = Path(root)
    out = [e for e in [_entry(root, True)] if e is not None]
    if root.is_dir():
        subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        out += [e for e in (_entry(p, False) for p in subs) if e is not None]
    return out


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--weights``, ``--model`` and ``--device``, as every command that loads a model takes them (read them back
    with :func:`model_folder` and ``core.model.device.select_device``)."""
    p.add_argument("--weights", default=str(DEFAULT_MODEL_DIR), help="model folder (model_card.json + weights), or "
                                                                      "with --model the registry folder holding it")
    p.add_argument("--model", default=None, help="a model of the registry --weights by name (card name or folder "
                                                 "name, e.g. brain-mri-feltrin44); default: the folder's own bundle")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")


def model_folder(weights: str | Path, name: str | None) -> Path:
    """The bundle folder that ``--weights`` and ``--model`` name: ``weights`` itself without a name, else that
    registry's model ``name`` (:func:`find_model`)."""
    return find_model(weights, name) if name else Path(weights)


def find_model(root: str | Path, name: str | None) -> Path:
    """The bundle folder of model ``name`` (card name or sub-folder name) in the registry ``root``; the default
    bundle for None. Raises ``ValueError`` naming the models there when there is no such model."""
    models = list_models(root)
    if name is None:
        if models and models[0].default:
            return models[0].path
        raise ValueError(f"{root} holds no default model bundle")
    for e in models:
        if name in (e.name, e.path.name):
            return e.path
    known = ", ".join(f"{e.name} ({e.path.name})" if not e.default else f"{e.name} (default)" for e in models)
    raise ValueError(f"no model named {name!r} in {root}; models there: {known or 'none'}")
