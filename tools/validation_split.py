"""Rebuild a model's validation files (the slices it was selected on) as a folder tree, checked against its card.

train.py carves validation parts out of every declared source with a seeded, duplicate- and case-aware split
and records fingerprints of every part in the card. This command rebuilds that split from the data spec in
the card, verifies it, and writes symbolic links OUT/<class>/<file> to the validation images (files of a
source whose folders are not named as classes go under OUT/<class>/<source>/), so any labelled-folder tool
can run on exactly those slices, for example the stress test when comparing candidate models without
touching a test part:

    python -m tools.validation_split --out runs/validation
    python -m tools.shift_eval --data runs/validation --out runs/shift_eval_validation.json

Volume slices have no file to link to and are left out (the command says how many). It refuses when the
rebuilt split does not match the card's fingerprints (other data, or a card from before they existed).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    from core.model.checkpoint import load_bundle
    from core.data.dataset import fingerprint
    from core.errors import CheckpointError
    from core.data.sources import source_root
    from core.data.splits import split_of_model, trainable

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", default=str(REPO / "weights"), help="model folder")
    p.add_argument("--data-root", default=None, help="folder of the data spec's sources (default: the card's)")
    p.add_argument("--out", required=True, help="folder to create the tree in (must not exist yet)")
    p.add_argument("--cache-dir", default=".cache", help="train.py's cache of preprocessed images")
    p.add_argument("--workers", type=int, default=2, help="processes decoding images for the cache")
    args = p.parse_args(argv)

    try:
        bundle = load_bundle(args.weights)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    expected = bundle.card.training.validation_fingerprint
    if not expected:
        print("error: this model card has no training.validation_fingerprint (cards written before train.py "
              "recorded it), so its validation files cannot be verified", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} already exists", file=sys.stderr)
        return 2
    try:
        data, root, split = split_of_model(bundle.card, args.data_root, args.cache_dir, args.workers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    val = trainable(split, "val", bundle.card.data.left_out)
    if fingerprint([split.records[i] for i in val]) != expected:
        print(f"error: the split rebuilt from {root} does not match the card's validation fingerprint "
              "(different data, or a different split configuration)", file=sys.stderr)
        return 2
    linked = skipped = 0
    for i in val:
        r = split.records[i]
        source = data.source(r.source)
        if source.kind != "folder_tree":
            skipped += 1
            continue
        cls = data.class_names[r.label]
        rel = Path(r.path) if Path(r.path).parts[0] == cls else Path(cls, r.source, r.path)
        link = out / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((source_root(source, root) / r.path).resolve(), link)
        linked += 1
    print(f"wrote {linked} links under {out} (validation files of model {bundle.sha256[:12]}, fingerprint "
          f"verified)" + (f"; {skipped} volume slices have no file and were left out" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
