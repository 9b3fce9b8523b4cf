"""Pack the training and validation images of a data spec into one small file, for a GPU machine that can
receive only a little data (the lent H200 takes 64 MiB with the command).

    python -m tools.pack_training_data --out runs/pack.npz              # data_specs/multisource.json
    python train.py --packed runs/pack.npz --arch efficientnet_lite0 --pretrained ...   # on the GPU

What is packed is what ``train.py`` trains on: every record of the train and validation parts, as the head
crop at the model's input size (``core.preprocess``), encoded as WebP (lossy, quality ``--quality``: the
crops of 12,500 slices at 160 px are about 45 MB at quality 80, 62 MB at 90, 150 MB lossless), together
with the records, the split and the data spec. The pack records the fingerprint of every part (SHA-256 over
the source files' paths, labels and contents, as the model card does) and ``--card`` checks them against a
model's card, so a pack is verifiably the data that card was trained on. The held-out parts stay out: a
model trained from a pack is evaluated where the data is (``train.py --init-from RUN --epochs 0``).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
PACK_VERSION = 1


def encode(images: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, S, S) -> (concatenated WebP bytes as uint8, int64 (N + 1,) offsets)."""
    chunks = [cv2.imencode(".webp", im, [cv2.IMWRITE_WEBP_QUALITY, quality])[1].ravel() for im in images]
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)), offsets


def decode(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.stack([cv2.imdecode(blob[offsets[i]:offsets[i + 1]], cv2.IMREAD_GRAYSCALE)
                     for i in range(len(offsets) - 1)])


def load_pack(path: str | Path) -> tuple[dict, list[dict], np.ndarray]:
    """(meta, records with their part and group, uint8 (N, S, S) images) of a pack."""
    z = np.load(path, allow_pickle=False)
    meta = json.loads(str(z["meta"]))
    if meta.get("pack_version") != PACK_VERSION:
        raise ValueError(f"{path}: pack version {meta.get('pack_version')}, expected {PACK_VERSION}")
    return meta, json.loads(str(z["records"])), decode(z["blob"], z["offsets"])


def main(argv: list[str] | None = None) -> int:
    from core.data.spec import DataSpec, DataSpecError
    from core.data.dataset import fingerprint
    from core.preprocess import PreprocessSpec
    from core.data.sources import index_sources
    from core.data.splits import split_sources
    from core.model.card import ModelCard

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-spec", default=str(REPO / "data_specs" / "multisource.json"), help="data spec JSON")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"), help="folder of the sources")
    p.add_argument("--image-size", type=int, default=PreprocessSpec.image_size, help="crop side in pixels")
    p.add_argument("--seed", type=int, default=42, help="split seed (train.py --seed)")
    p.add_argument("--quality", type=int, default=80, help="WebP quality (1-100; 101 = lossless)")
    p.add_argument("--max-mib", type=float, default=60.0, help="refuse to write a larger pack")
    p.add_argument("--card", default=None, help="model_card.json whose data fingerprints the pack must match")
    p.add_argument("--cache-dir", default=".cache", help="train.py's cache of preprocessed images")
    p.add_argument("--out", required=True, help="pack file (.npz)")
    args = p.parse_args(argv)
    try:
        data = DataSpec.load(args.data_spec)
        spec = PreprocessSpec(image_size=args.image_size)
        split = split_sources(index_sources(data, args.data_root, spec, args.cache_dir), data.near_distance,
                              args.seed)
    except (DataSpecError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keep = np.flatnonzero(np.isin(split.part, ["train", "val"]))
    fingerprints = {f"{s}/{p}": fingerprint([split.records[i] for i in split.select(p, s)])
                    for s in split.sources for p in ("train", "val") if len(split.select(p, s))}
    if args.card:
        recorded = ModelCard.from_dict(json.loads(Path(args.card).read_text())).training.data_fingerprint
        wrong = [k for k, fp in fingerprints.items() if recorded.get(k) != fp]
        if wrong:
            print(f"error: parts {wrong} differ from the card's data fingerprints", file=sys.stderr)
            return 2
    blob, offsets = encode(split.images[keep], args.quality)
    records = [dict(asdict(split.records[i]), part=str(split.part[i]), group=int(split.groups[i])) for i in keep]
    meta = {"pack_version": PACK_VERSION, "data_spec": data.to_dict(), "input_spec": spec.to_dict(),
            "seed": args.seed, "quality": args.quality, "fingerprints": fingerprints,
            "data_root": str(args.data_root)}
    size = blob.nbytes + offsets.nbytes + len(json.dumps(records))
    if size > args.max_mib * 2**20:
        print(f"error: the pack would be {size / 2**20:.1f} MiB (> {args.max_mib:g}); lower --quality or "
              "--image-size", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, blob=blob, offsets=offsets, records=json.dumps(records), meta=json.dumps(meta))
    print(f"wrote {args.out}: {len(keep)} images, {Path(args.out).stat().st_size / 2**20:.1f} MiB "
          f"(WebP quality {args.quality}, {args.image_size} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
