"""Rebuild a model's validation files (the slices it was selected on) as a folder tree, checked against its card.

train.py carves validation out of Training with a seeded, duplicate-aware split and records a fingerprint of
the files in the card (``training.validation_fingerprint``). This command repeats that split and writes
symbolic links OUT/<class>/<file>, so any labelled-folder tool can run on exactly those slices, for example
the stress test when comparing candidate models without touching Testing:

    python -m tools.validation_split --out runs/validation
    python -m tools.shift_eval --data runs/validation --out runs/shift_eval_validation.json

It refuses when the rebuilt split does not match the fingerprint (other data, or a card from before the
fingerprint existed).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    import train
    from core.checkpoint import load_bundle
    from core.dataset import class_names_of, fingerprint
    from core.errors import CheckpointError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", default=str(REPO / "weights"), help="model folder")
    p.add_argument("--data-root", default=str(train.DEFAULT_DATA), help="folder with the train/test split folders")
    p.add_argument("--out", required=True, help="folder to create the tree in (must not exist yet)")
    p.add_argument("--cache-dir", default=".cache", help="train.py's cache of preprocessed images")
    p.add_argument("--workers", type=int, default=2, help="processes decoding images for the cache")
    args = p.parse_args(argv)

    try:
        bundle = load_bundle(args.weights)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    training = bundle.card.get("training", {})
    expected = training.get("validation_fingerprint")
    if not expected:
        print("error: this model card has no training.validation_fingerprint (cards written before train.py "
              "recorded it), so its validation files cannot be verified", file=sys.stderr)
        return 2
    out, root = Path(args.out), Path(args.data_root)
    if out.exists():
        print(f"error: {out} already exists", file=sys.stderr)
        return 2
    hp = training.get("hyperparameters", {})
    split_args = argparse.Namespace(val_fraction=hp.get("val_fraction", 0.15), seed=training.get("seed", 42),
                                    near_distance=hp.get("near_distance", train.DEFAULT_NEAR_DISTANCE),
                                    cache_dir=args.cache_dir, workers=args.workers)
    train_dir, test_dir = training.get("train_dir", "Training"), training.get("test_dir", "Testing")
    if not (root / train_dir).is_dir():
        print(f"error: training folder not found: {root / train_dir}", file=sys.stderr)
        return 2
    class_names = class_names_of(root / train_dir)
    # A continued run splits with its first ancestor's preprocessing (train.py), which the card does not name;
    # the chain may have started before the steadier head search, so the plain-Otsu crop is tried second.
    candidates = [bundle.spec, replace(bundle.spec, head_search="otsu", version=2)]
    for spec in dict.fromkeys(candidates):
        split = train.split_training(root, train_dir, test_dir, class_names, spec, split_args)
        val = [split.records[i] for i in split.val_idx]
        if fingerprint(val) == expected:
            break
    else:
        print(f"error: the split rebuilt from {root} does not match the card's validation fingerprint "
              "(different data, or a different split configuration)", file=sys.stderr)
        return 2
    for r in val:
        link = out / r.path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((root / train_dir / r.path).resolve(), link)
    print(f"wrote {len(val)} links under {out} (validation files of model {bundle.sha256[:12]}, fingerprint "
          f"verified)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
