"""The model card: one typed record of what a model is, how it was made and how it is to be used.

Written as ``model_card.json`` next to the weights by ``train.py`` (:func:`core.model.checkpoint.write_card`), read
by :func:`core.model.checkpoint.load_bundle` (``ModelBundle.card``), the pages and the tools. Like a MONAI bundle's
metadata it carries the version, the intended use, the classes (in model output order) and the input contract
(``input_spec``, a :class:`core.preprocess.PreprocessSpec`), plus architecture, calibration, OOD gate, data,
training provenance, weights hash, explanation method and headline metrics.

Round trip: ``ModelCard.from_dict(d).to_dict() == d`` for every card ever written. Older cards lack fields: those
read as the defaults below (which are what the code assumed before the field existed) and are left out again when
written back unchanged; keys this code does not know are kept verbatim (``CardSection.kept``), and a card read from
JSON is written back with its keys in the same order.
"""
from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from core.preprocess import PreprocessSpec

INTENDED_USE = ("Research use only, not for diagnosis. Classifies single 2-D brain MRI slices into "
                "the trained classes to support research and review; not a medical device, not "
                "validated for clinical decisions.")


@dataclass
class KeyLayout:
    """How a section looked in the JSON it was read from: its key order and the keys no field holds.

    ``keys`` is None for a section built in code (then fields are written in declaration order).
    """

    keys: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, d: dict, known: set[str]) -> "KeyLayout":
        return cls(tuple(d), {k: copy.deepcopy(v) for k, v in d.items() if k not in known})

    def arrange(self, values: dict[str, Any], absent: dict[str, Any],
                optional: frozenset[str] = frozenset()) -> dict[str, Any]:
        """``values`` (plain, declaration order) plus the kept unknown keys, in the source's key order. A field the
        source did not have is written only if it no longer holds ``absent[name]``, the value it was read as; in
        a section built in code, so is an ``optional`` field."""
        if self.keys is None:
            kept = {k: v for k, v in values.items() if k not in optional or v != absent.get(k, MISSING)}
            return {**kept, **copy.deepcopy(self.extra)}
        out: dict[str, Any] = {}
        for k in self.keys:
            if k in values:
                out[k] = values[k]
            elif k in self.extra:
                out[k] = copy.deepcopy(self.extra[k])
        out.update({k: v for k, v in values.items() if k not in out and v != absent.get(k, MISSING)})
        out.update({k: copy.deepcopy(v) for k, v in self.extra.items() if k not in out})
        return out


def _plain(value: Any) -> Any:
    """A field's JSON form: sections and specs as dicts, everything else copied."""
    if isinstance(value, (CardSection, PreprocessSpec)):
        return value.to_dict()
    return copy.deepcopy(value)


def _default(f) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


OPTIONAL = {"optional": True}  # field metadata: written only when set, also in a section built in code


@dataclass
class CardSection:
    """Base of every part of the card: ``from_dict`` / ``to_dict`` that round-trip exactly (module docstring).

    ``_sections`` names the fields that hold a nested section (read with that class when the JSON has a dict).
    """

    kept: KeyLayout = field(default_factory=KeyLayout, kw_only=True, repr=False, compare=False)
    _sections: ClassVar[dict[str, type]] = {}

    @classmethod
    def _fields(cls) -> list:
        return [f for f in fields(cls) if f.name != "kept"]

    @classmethod
    def _read_field(cls, name: str, raw: Any) -> Any:
        section = cls._sections.get(name)
        if section is not None and isinstance(raw, dict):
            return section.from_dict(raw)
        return copy.deepcopy(raw)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in cls._fields()}
        values = {k: cls._read_field(k, d[k]) for k in known if k in d}
        return cls(**values, kept=KeyLayout.of(d, known))

    def recorded(self, name: str) -> bool:
        """Whether the JSON this section was read from had the key ``name`` (always True when built in code)."""
        return self.kept.keys is None or name in self.kept.keys

    def to_dict(self) -> dict:
        values = {f.name: _plain(getattr(self, f.name)) for f in self._fields()}
        absent = {f.name: _plain(_default(f)) for f in self._fields()}
        optional = frozenset(f.name for f in self._fields() if f.metadata.get("optional"))
        return self.kept.arrange(values, absent, optional)


@dataclass
class Architecture(CardSection):
    name: str = ""  # core.model.architectures name, e.g. "efficientnet_lite0"
    in_channels: int = 1
    num_classes: int = 0
    parameters: int | None = None
    pretrained: bool = False  # started from ImageNet weights (the whole --init-from lineage counts)
    cam_layer: str | None = None  # Grad-CAM layer ("last", "stride16"); None: the architecture's default


@dataclass
class Calibration(CardSection):
    method: str = ""
    temperature: float = 1.0  # softmax(logits / temperature); cards without calibration: 1


@dataclass
class Inference(CardSection):
    tta: str = "none"  # core.model.tta name; cards written before the field existed mean "none"


@dataclass
class OODRecord(CardSection):
    method: str = ""
    threshold: float = float("inf")  # Mahalanobis distance above which a slice is "outside intended use"
    threshold_percentile_of_validation: float | None = None
    # auroc_heldout_vs_non_mri, flagged rates, counts; only when the held-out parts were evaluated
    evaluation: dict[str, Any] = field(default_factory=dict, metadata=OPTIONAL)


@dataclass
class DataRecord(CardSection):
    spec: dict[str, Any] | None = None  # core.data.spec.DataSpec.to_dict() of the declared sources
    spec_sha256: str | None = None
    root: str | None = None
    left_out: list[str] = field(default_factory=list)  # --leave-out sources
    parts: dict[str, int] = field(default_factory=dict)  # "source/part" -> number of images


@dataclass
class ParentRecord(CardSection):
    """What a child card keeps of its ``--init-from`` parent; ``init_from`` nests back to the run from scratch."""

    sha256: str | None = None
    command: str | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    best_weights: str | None = None
    selection_score: float | None = None
    validation_scores: dict[str, Any] | None = None
    duration_s: float | None = None
    init_from: "ParentRecord | None" = None


ParentRecord._sections = {"init_from": ParentRecord}


@dataclass
class TrainingRecord(CardSection):
    """Training provenance: the command, seed, data fingerprints, epochs and their validation history."""

    command: str | None = None
    seed: int | None = None
    device: str | None = None
    dry_run: bool = False
    init_from: ParentRecord | None = None
    data_root: str | None = None
    train_dir: str | None = None
    test_dir: str | None = None
    data_fingerprint: dict[str, str] = field(default_factory=dict)  # "source/part" -> SHA-256 of its files
    validation_fingerprint: str | None = None
    # The input spec the split and its near-duplicate groups were computed with, where it is not the model's
    # own: a continued run that changed the crop keeps its ancestor's split (train.py ``set_up``), and a
    # near-duplicate group found on other crops can differ at the margin. None: the model's input spec.
    split_input_spec: dict[str, Any] | None = None
    train_files: int | None = None
    val_files: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    best_weights: str | None = None  # "raw", "ema" or "parent" (a re-fit)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    selection_rule: str | None = None
    duration_s: float | None = None
    torch: str | None = None
    python: str | None = None
    augmentation: dict[str, Any] = field(default_factory=dict)  # core.data.augment config
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # train.py arguments, by flag name

    _sections: ClassVar[dict[str, type]] = {"init_from": ParentRecord}

    def kept_validation(self) -> dict[str, Any]:
        """The validation figures of the weights this run kept: the row of the chosen epoch in ``history``, for the
        raw or the averaged (EMA) weights, with the ``ema_`` prefix removed (so ``score`` is the selection score).
        A re-fit (``--epochs 0``) keeps its parent's weights and reports the figures recorded in ``init_from``.
        ``{}`` when nothing was recorded."""
        if not self.epochs_run:
            return dict((self.init_from.validation_scores if self.init_from else None) or {})
        best = self.best_epoch or 0
        if not 0 < best <= len(self.history):
            return {}
        ema = self.best_weights == "ema"
        return {k.removeprefix("ema_"): v for k, v in self.history[best - 1].items() if k.startswith("ema_") == ema}


@dataclass
class WeightsRecord(CardSection):
    file: str | None = None  # file name inside the model folder
    bytes: int | None = None
    sha256: str | None = None  # load_bundle refuses weights whose SHA-256 differs


@dataclass
class Explanation(CardSection):
    method: str | None = None  # core.explain.cam method, e.g. "gradcam", "layercam"
    layer: str | None = None
    rule: str | None = None
    validation_pointing_game: dict[str, float] = field(default_factory=dict)  # "method/layer" -> rate


_SPEC_FIELDS = set(PreprocessSpec.__dataclass_fields__)
_SPEC_ABSENT = PreprocessSpec.from_dict({}).to_dict()  # what a spec key reads as when a card lacks it


@dataclass
class ModelCard(CardSection):
    """The whole card. ``input_spec`` is None only on a card that lacks it (load_bundle refuses such a card)."""

    name: str | None = None
    version: str | None = None
    created: str | None = None  # UTC, ISO 8601
    intended_use: str | None = None
    class_names: list[str] = field(default_factory=list)  # in model output order
    input_spec: PreprocessSpec | None = None
    architecture: Architecture = field(default_factory=Architecture)
    calibration: Calibration = field(default_factory=Calibration)
    inference: Inference = field(default_factory=Inference)
    ood: OODRecord = field(default_factory=OODRecord)
    data: DataRecord = field(default_factory=DataRecord)
    training: TrainingRecord = field(default_factory=TrainingRecord)
    weights: WeightsRecord = field(default_factory=WeightsRecord)
    explanation: Explanation = field(default_factory=Explanation)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # set name -> headline figures
    spec_layout: KeyLayout = field(default_factory=KeyLayout, kw_only=True, repr=False, compare=False)

    _sections: ClassVar[dict[str, type]] = {
        "architecture": Architecture, "calibration": Calibration, "inference": Inference, "ood": OODRecord,
        "data": DataRecord, "training": TrainingRecord, "weights": WeightsRecord, "explanation": Explanation}

    @classmethod
    def _fields(cls) -> list:
        return [f for f in fields(cls) if f.name not in ("kept", "spec_layout")]

    @classmethod
    def _read_field(cls, name: str, raw: Any) -> Any:
        if name == "input_spec" and isinstance(raw, dict):
            return PreprocessSpec.from_dict(raw)  # ValueError on an unknown head search
        return super()._read_field(name, raw)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        """Read a card's JSON; raises ValueError (unknown head search) and TypeError / AttributeError on a
        malformed one."""
        card = super().from_dict(d)
        raw_spec = d.get("input_spec")
        if isinstance(raw_spec, dict):
            card.spec_layout = KeyLayout.of(raw_spec, _SPEC_FIELDS)
        return card

    def to_dict(self) -> dict:
        out = super().to_dict()
        if isinstance(self.input_spec, PreprocessSpec) and "input_spec" in out:
            out["input_spec"] = self.spec_layout.arrange(self.input_spec.to_dict(), _SPEC_ABSENT)
        return out

    @property
    def split_spec(self) -> PreprocessSpec | None:
        """The input spec this model's split was computed with: ``training.split_input_spec`` where recorded (a
        continued run that changed the crop keeps its ancestor's split), else the model's own."""
        recorded = self.training.split_input_spec
        return PreprocessSpec.from_dict(recorded) if recorded else self.input_spec

    @property
    def identity(self) -> dict[str, Any]:
        """{"sha256", "version", "tta"}: what decides this model's outputs.

        The weights' SHA-256 alone does not: ``train.py --epochs 0`` re-fits calibration and test-time augmentation
        for unchanged weights. A report made for a model (the stress test) records this and is shown only for an
        equal one.
        """
        return {"sha256": self.weights.sha256, "version": self.version, "tta": self.inference.tta}
