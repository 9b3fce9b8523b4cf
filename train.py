"""Train the brain MRI slice classifier and write weights, model card, metrics and data audit.

    python train.py --data-root ../shared/data/brain-tumor-mri --out weights
    python train.py --dry-run            # a few steps on a tiny synthetic dataset

Steps: audit the data (exact + near duplicates, sizes, channels) -> leak-free stratified
validation split carved out of Training (near-duplicate groups never straddle it) ->
train with augmentation, keeping the best validation checkpoint -> temperature scaling
and the OOD statistics fitted on training/validation data only -> save -> reload the
saved bundle and evaluate it through the serving code on the full Testing split and
on its leakage-free subset.
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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from core import __version__
from core.audit import DEFAULT_NEAR_DISTANCE, audit_splits
from core.augment import AugmentConfig, augment_batch
from core.calibration import fit_temperature, softmax
from core.checkpoint import AUDIT_FILE, CARD_FILE, INTENDED_USE, METRICS_FILE, load_bundle, model_identity, save_bundle
from core.dataset import FileRecord, class_names_of, fingerprint, index_tree
from core.device import autocast_dtype, select_device
from core.errors import PretrainedUnavailableError
from core.evaluate import metrics_for_run, run_labelled
from core.metrics import evaluate_predictions, summary
from core.model import Classifier, build_model
from core.ood import MahalanobisOOD
from core.predictor import Predictor
from core.preprocess import HEAD_SEARCHES, PreprocessSpec, preprocess, to_model_tensor
from core.quantize import FeaturesAndLogits
from core.synthetic import NON_MRI_KINDS, fake_scan, non_mri_image
from core.tta import TTA_MODES, with_tta

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "shared" / "data" / "brain-tumor-mri"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder with the train/test split folders")
    p.add_argument("--train-dir", default="Training", help="training split (ROOT/<class>/...) under --data-root")
    p.add_argument("--test-dir", default="Testing", help="held-out test split under --data-root ('' to skip)")
    p.add_argument("--out", default=None, help="output model folder (default: weights/, or a temp folder with --dry-run)")
    p.add_argument("--arch", default="slimresnet", help="slimresnet or resnet18")
    p.add_argument("--pretrained", action="store_true", help="ImageNet init via torchvision's weights API (internet)")
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
    p.add_argument("--gamma-range", type=float, nargs=2, default=list(AugmentConfig.gamma_range), metavar=("LO", "HI"),
                   help="augmentation: random intensity gamma per image (other scanners and sequences; "
                        "above 1 darkens mid-tones)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="decay of an exponential moving average of the weights, updated every step (0: off). "
                        "Each epoch the raw and the averaged weights are both scored on validation and the "
                        "better one competes for the best checkpoint")
    p.add_argument("--tta", default="none", choices=TTA_MODES,
                   help="test-time augmentation for validation scoring, calibration, evaluation and serving "
                        "(stored in the card): hflip averages each slice with its left-right mirror")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of Training held out for validation")
    p.add_argument("--near-distance", type=int, default=DEFAULT_NEAR_DISTANCE, help="pHash bits for near duplicates")
    p.add_argument("--ood-percentile", type=float, default=99.0, help="validation percentile used as OOD threshold")
    p.add_argument("--seed", type=int, default=42, help="random seed for split, init and augmentation")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--workers", type=int, default=2, help="processes decoding images for the cache")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--cache-dir", default=".cache", help="where decoded, preprocessed images are cached")
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many steps (0: no limit)")
    p.add_argument("--version", default=__version__, help="model version written to the card")
    p.add_argument("--dry-run", action="store_true", help="train a few steps on a tiny synthetic dataset")
    return p.parse_args(argv)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_synthetic_dataset(root: Path, per_class: int = 12, seed: int = 0) -> None:
    """Tiny labelled tree of fake scans (Training/ and Testing/) for --dry-run and tests."""
    rng = np.random.default_rng(seed)
    names = ["glioma", "meningioma", "notumor", "pituitary"]
    for split, n in (("Training", per_class), ("Testing", max(2, per_class // 3))):
        for k, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(fake_scan(rng, int(rng.integers(96, 200)), k)).save(d / f"{split[:2]}_{name}_{i}.jpg")


def leak_free_split(labels: np.ndarray, groups: list[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/val indices; a duplicate group is wholly on one side."""
    n_splits = max(2, round(1 / val_fraction))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(sgkf.split(np.zeros(len(labels)), labels, groups))
    return train_idx, val_idx


@dataclass
class TrainingSplit:
    """Training records and cached images, the duplicate audit of all splits, and the leak-free train/val indices."""

    records: list[FileRecord]
    images: np.ndarray  # uint8 (N, S, S), preprocessed with the audit spec
    splits: dict[str, list[FileRecord]]  # every audited split's records, Training included
    audit: dict
    groups: dict[str, list[int]]
    train_idx: np.ndarray
    val_idx: np.ndarray


def split_training(root: Path, train_dir: str, test_dir: str, class_names: list[str], audit_spec: PreprocessSpec,
                   args: argparse.Namespace) -> TrainingSplit:
    """Index Training (and Testing, for cross-split duplicates), audit them and carve the validation split.

    ``args`` supplies ``val_fraction``, ``seed``, ``near_distance``, ``cache_dir`` and ``workers``. The same
    inputs give the same split, which ``tools.validation_split`` relies on to rebuild a model's validation files.
    """
    records, images = index_tree(root / train_dir, class_names, audit_spec, args.cache_dir, args.workers,
                                 "index Training")
    splits = {train_dir: records}
    if test_dir and (root / test_dir).is_dir():
        splits[test_dir] = index_tree(root / test_dir, class_names, audit_spec, args.cache_dir, args.workers,
                                      "index Testing")[0]
    audit, groups = audit_splits(splits, class_names, args.near_distance)
    labels = np.array([r.label for r in records])
    tr_groups = np.array(groups[train_dir])
    usable = np.flatnonzero([not r.error for r in records])
    t_idx, v_idx = leak_free_split(labels[usable], list(tr_groups[usable]), args.val_fraction, args.seed)
    train_idx, val_idx = usable[t_idx], usable[v_idx]
    assert not set(tr_groups[train_idx]) & set(tr_groups[val_idx]), "a duplicate group straddles train/val"
    return TrainingSplit(records, images, splits, audit, groups, train_idx, val_idx)


def batches(n: int, size: int, shuffle: bool, gen: torch.Generator | None = None):
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, size):
        yield order[i:i + size]


def predict_arrays(model: Classifier, images: torch.Tensor, spec: PreprocessSpec, device: torch.device,
                   tta: str = "none", batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and pooled features (N, F) for uint8 (N, S, S) images, no training
    augmentation; test-time augmentation ``tta`` as the predictor applies it (``core.tta``)."""
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


def validation_scores(model: Classifier, images: torch.Tensor, labels: np.ndarray, spec: PreprocessSpec,
                      device: torch.device, tta: str = "none") -> dict:
    """Loss, accuracy and macro-F1 on validation, and the checkpoint score: macro-F1 first, lower loss breaks ties."""
    logits, _ = predict_arrays(model, images, spec, device, tta)
    loss = float(F.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels)))
    pred = logits.argmax(1)
    f1 = float(f1_score(labels, pred, average="macro"))
    return {"val_loss": loss, "val_accuracy": float((pred == labels).mean()), "val_macro_f1": f1,
            "score": f1 - 1e-3 * loss}


def train_model(model: Classifier, images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor,
                val_labels: np.ndarray, spec: PreprocessSpec, args: argparse.Namespace, device: torch.device,
                gen: torch.Generator) -> dict:
    """Train in place; restores the best-validation weights. Returns the training history."""
    steps_per_epoch = (len(images) + args.batch_size - 1) // args.batch_size
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.15)
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    aug = AugmentConfig(gamma_range=(args.gamma_range[0], args.gamma_range[1]))
    images, labels = images.to(device), labels.to(device)
    # use_buffers: BatchNorm running statistics are averaged too, so the averaged model is usable as it is.
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
           if args.ema > 0 else None)
    best = {"score": -1.0, "epoch": -1, "weights": "raw", "state": None}
    history = []
    for epoch in range(args.epochs):
        model.train()
        t0, total, seen = time.time(), 0.0, 0
        bar = tqdm(batches(len(images), args.batch_size, True, gen), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for step, idx in enumerate(bar):
            if step >= steps_per_epoch:
                break
            x = augment_batch(images[idx.to(device)].float().unsqueeze(1) / 255, aug).squeeze(1)
            x = to_model_tensor(x, spec)
            if device.type != "mps":
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx.to(device)]
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
        row.update(validation_scores(model, val_images, val_labels, spec, device, args.tta))
        candidate, score, row["weights"] = model, row["score"], "raw"
        if ema is not None:
            ema_scores = validation_scores(ema.module, val_images, val_labels, spec, device, args.tta)
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
        "auroc_testing_vs_non_mri": auroc,
        "non_mri_flagged_rate": float(flags.mean()),
        "non_mri_flagged_per_kind": {k: float(flags[[i for i, kk in enumerate(kinds) if kk == k]].mean())
                                     for k in NON_MRI_KINDS},
        "testing_flagged_rate": float(in_dist_flags.mean()),
        "non_mri_images": len(probes),
        "note": "Non-MRI probes are generated by core/synthetic.py (noise, blank, gradients, charts, "
                "documents, shapes, photo-like scenes, checkerboards).",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in ([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])))
    gen = seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.dry_run:
        tmp = tempfile.TemporaryDirectory(prefix="mri-dry-run-")
        make_synthetic_dataset(Path(tmp.name) / "data", seed=args.seed)
        args.data_root = str(Path(tmp.name) / "data")
        args.epochs, args.max_steps = min(args.epochs, 2), args.max_steps or 3
        args.image_size, args.batch_size = min(args.image_size or 64, 64), min(args.batch_size, 16)
        args.cache_dir, args.workers, args.patience = str(Path(tmp.name) / "cache"), 1, max(args.patience, 2)
        args.out = args.out or str(Path(tmp.name) / "weights")
    out = Path(args.out or Path(__file__).resolve().parent / "weights")
    if args.epochs < 0 or (args.epochs == 0 and not args.init_from):
        print("error: --epochs must be at least 1, or 0 together with --init-from (re-fit only)", file=sys.stderr)
        return 2
    if not 0 < args.gamma_range[0] <= args.gamma_range[1]:
        print(f"error: --gamma-range needs 0 < LO <= HI, got {args.gamma_range}", file=sys.stderr)
        return 2
    try:
        device = select_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"device: {device}; output: {out}", flush=True)
    started = time.time()

    root = Path(args.data_root)
    train_root = root / args.train_dir
    test_root = root / args.test_dir if args.test_dir else None
    if not train_root.is_dir():
        print(f"error: training folder not found: {train_root}", file=sys.stderr)
        return 2
    class_names = class_names_of(train_root)
    parent = load_bundle(args.init_from) if args.init_from else None
    if parent is not None and (parent.class_names != class_names
                               or parent.card["architecture"]["name"] != args.arch):
        print(f"error: {args.init_from} has classes {parent.class_names} and arch "
              f"{parent.card['architecture']['name']}; expected {class_names}, {args.arch}", file=sys.stderr)
        return 2
    # A continued run keeps the parent's input contract; only the side and the head search may change (the
    # networks end in a global pool, so weights carry over: fine-tuning at a larger size is progressive
    # resizing, and a steadier crop changes framing only slightly).
    base_spec = PreprocessSpec() if parent is None else parent.spec
    args.image_size = args.image_size or base_spec.image_size
    args.head_search = args.head_search or base_spec.head_search
    spec = replace(base_spec, image_size=args.image_size, head_search=args.head_search)
    if parent is not None and spec.head_search != parent.spec.head_search:
        spec = replace(spec, version=PreprocessSpec.version)  # the pipeline's definition changed
    # Hashes (audit, split, leak-free subset) come from the parent's geometry: near-duplicate groups found at
    # another size could differ at the margin and move a parent-training image into validation.
    audit_spec = spec if parent is None else parent.spec
    split = split_training(root, args.train_dir, args.test_dir, class_names, audit_spec, args)
    tr_records, tr_images, splits = split.records, split.images, split.splits
    audit, groups = split.audit, split.groups
    train_idx, val_idx = split.train_idx, split.val_idx
    labels = np.array([r.label for r in tr_records])
    tr_groups = np.array(groups[args.train_dir])
    if audit_spec != spec:
        resized, tr_images = index_tree(train_root, class_names, spec, args.cache_dir, args.workers,
                                        f"index Training at {spec.image_size} px, {spec.head_search}")
        assert [r.path for r in resized] == [r.path for r in tr_records]
    if parent is not None:
        if not args.epochs:  # nothing is trained: the card keeps the augmentation the weights were trained with
            args.gamma_range = parent.card.get("training", {}).get("hyperparameters", {}).get(
                "gamma_range", args.gamma_range)
    else:
        pix = tr_images[train_idx].astype(np.float32) / 255
        spec = replace(spec, mean=round(float(pix.mean()), 5), std=round(float(pix.std()), 5))
        del pix
    print(f"classes {class_names}; train {len(train_idx)}, val {len(val_idx)}; spec {spec}", flush=True)

    try:
        model = build_model(args.arch, spec.channels, len(class_names), pretrained=args.pretrained).to(device)
    except PretrainedUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if parent is not None:
        model.load_state_dict(parent.model.state_dict())
    if device.type != "mps":
        model = model.to(memory_format=torch.channels_last)
    images_t = torch.from_numpy(tr_images)
    if args.epochs:
        result = train_model(model, images_t[train_idx], torch.from_numpy(labels[train_idx]), images_t[val_idx],
                             labels[val_idx], spec, args, device, gen)
    else:  # re-fit only: the parent's weights as they are
        result = {"history": [], "best_epoch": 0, "best_weights": "parent", "epochs_run": 0}

    val_logits, _ = predict_arrays(model, images_t[val_idx], spec, device, args.tta)
    temperature = fit_temperature(val_logits, labels[val_idx])
    # Features are those of the unmirrored view under any --tta (core.tta), so no TTA pass here.
    _, train_feats = predict_arrays(model, images_t[train_idx], spec, device)
    ood = MahalanobisOOD.fit(train_feats, labels[train_idx], len(class_names))
    _, val_feats = predict_arrays(model, images_t[val_idx], spec, device)
    ood.calibrate_threshold(ood.score(torch.as_tensor(val_feats)).numpy(), args.ood_percentile)
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()

    card = {
        "name": "brain-mri-slice-classifier",
        "version": args.version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "intended_use": INTENDED_USE,
        "class_names": class_names,
        "input_spec": spec.to_dict(),
        "architecture": {"name": args.arch, "in_channels": spec.channels, "num_classes": len(class_names),
                         "parameters": sum(p.numel() for p in model.parameters()), "pretrained": args.pretrained},
        "calibration": {"method": "temperature scaling on the validation split", "temperature": temperature},
        "inference": {"tta": args.tta},
        "ood": {"method": "image gates (blank, colour) + Mahalanobis distance of penultimate features",
                "threshold": ood.threshold, "threshold_percentile_of_validation": args.ood_percentile},
        "training": {
            "command": command, "seed": args.seed, "device": str(device), "dry_run": args.dry_run,
            # Nested: the parent's own init_from comes along, so the card holds every command back to scratch.
            "init_from": None if parent is None else {"sha256": parent.sha256,
                                                      "command": parent.card.get("training", {}).get("command"),
                                                      "epochs_run": parent.card.get("training", {}).get("epochs_run"),
                                                      "init_from": parent.card.get("training", {}).get("init_from")},
            "data_root": str(root), "train_dir": args.train_dir, "test_dir": args.test_dir,
            "data_fingerprint": {s: audit["splits"][s]["fingerprint"] for s in splits},
            # Equal across a chain of continued runs: each child was selected on its parent's validation files.
            "validation_fingerprint": fingerprint([tr_records[i] for i in val_idx]),
            "train_files": int(len(train_idx)), "val_files": int(len(val_idx)),
            "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"],
            "best_weights": result["best_weights"], "history": result["history"],
            "duration_s": None, "torch": torch.__version__, "python": platform.python_version(),
            "hyperparameters": {k: getattr(args, k) for k in (
                "arch", "image_size", "epochs", "patience", "batch_size", "lr", "weight_decay", "label_smoothing",
                "gamma_range", "ema", "tta", "val_fraction", "near_distance")},
        },
    }
    card = save_bundle(out, model, card, ood)
    (out / AUDIT_FILE).write_text(json.dumps(audit, indent=2))

    # Evaluate the saved artefact through the serving path, exactly as a user would get it.
    predictor = Predictor(load_bundle(out), device)
    metrics: dict = {"model": {"name": card["name"], **model_identity(card)},
                     "class_names": class_names, "sets": {}}
    if test_root is not None and test_root.is_dir():
        run = run_labelled(predictor, test_root, show_bar=True)
        test_groups = dict(zip((r.path for r in splits[args.test_dir]), groups[args.test_dir]))
        train_group_set = set(tr_groups.tolist())
        leak_free = np.array([test_groups.get(f) not in train_group_set for f in run.files])
        metrics["sets"]["testing_full"] = metrics_for_run(run, class_names, temperature)
        metrics["sets"]["testing_leak_free"] = metrics_for_run(run, class_names, temperature, leak_free)
        metrics["sets"]["testing_leak_free"]["definition"] = (
            f"Testing images with no exact (SHA-256) or near (pHash <= {args.near_distance} bits) copy in Training")
        metrics["ood"] = measure_ood(predictor, run.ood_flags, run.ood_scores, 25 if not args.dry_run else 2, args.seed)
    metrics["sets"]["validation"] = evaluate_predictions(
        labels[val_idx], softmax(val_logits, temperature), class_names, [tr_records[i].path for i in val_idx],
        softmax(val_logits, 1.0), n_boot=200)
    metrics["audit_summary"] = {k: audit[k] for k in ("exact_duplicate_groups", "exact_duplicate_files",
                                                     "duplicate_groups_exact_or_near", "duplicate_files_exact_or_near",
                                                     "label_conflict_groups", "cross_split",
                                                     "near_duplicate_max_hamming_bits")}
    metrics["dataset_root"] = str(root)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    card["metrics"] = {name: summary(m) for name, m in metrics["sets"].items()}
    if "ood" in metrics:
        card["ood"]["evaluation"] = {k: v for k, v in metrics["ood"].items() if k != "note"}
    card["training"]["duration_s"] = round(time.time() - started, 1)
    (out / CARD_FILE).write_text(json.dumps(card, indent=2))
    print(json.dumps(card["metrics"], indent=2))
    if tmp is not None and argv is None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
