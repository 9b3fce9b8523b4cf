"""Summary ``training_epochs``: epoch times from the shipped model card and from the cards of timing runs
(``--train-card``); nothing is trained here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.common import REPO
from bench.context import BenchContext

KEY = "training_epochs"


def training_epochs(extra_cards: list[Path] = ()) -> dict:
    """An epoch's seconds (``training.history``) include its validation pass; images/s is training images per
    epoch divided by that, so runs on training sets of other sizes compare."""
    from core.model.card import ModelCard

    out: dict = {}
    for card_path in [REPO / "weights" / "model_card.json", *map(Path, extra_cards)]:
        try:
            t = ModelCard.from_dict(json.loads(card_path.read_text())).training
        except (OSError, ValueError):
            continue
        secs = [h["seconds"] for h in t.history or [] if "seconds" in h]
        if not secs:
            continue
        try:
            source = str(card_path.resolve().relative_to(REPO))
        except ValueError:
            source = card_path.name
        median, n = float(np.median(secs)), t.train_files
        out[f"{t.device or '?'}: {source}"] = {
            "device": t.device, "epochs": len(secs), "median_epoch_s": median, "min_epoch_s": float(min(secs)),
            "max_epoch_s": float(max(secs)), "train_images": n, "images_per_s": round(n / median, 1) if n else None,
            "data": f"{t.data_root}/{t.train_dir}", "image_size": t.hyperparameters.get("image_size"),
            "torch": t.torch, "source": source}
    return out


def measure(ctx: BenchContext) -> dict:
    return training_epochs(ctx.args.train_card)


def render(r: dict) -> str:
    tr = r.get(KEY, {})
    if not tr:
        return ""
    return "**Training** (`train.py`; an epoch includes its validation pass): " + "; ".join(
        f"{v.get('device', dev)}: median epoch {v['median_epoch_s']:.1f} s over {v['epochs']} epochs"
        + (f" of {v['train_images']} {v['image_size']} px images from `{v['data']}`" if v.get("train_images") else "")
        + " (" + (f"{v['images_per_s']} img/s; " if v.get("images_per_s") else "") + f"`{v['source']}`)"
        for dev, v in tr.items()) + "."
