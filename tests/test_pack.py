"""tools.pack_training_data: a compact copy of the training data for a GPU machine, verified, and trainable."""
from __future__ import annotations

import json

import numpy as np


def test_pack_trains_and_verifies_against_the_card(tmp_path):
    import train
    from tools import pack_training_data as pack

    data = tmp_path / "data"
    spec = train.make_synthetic_dataset(data, per_class=8, seed=0, volumes=True)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    cache = tmp_path / "cache"
    out = tmp_path / "pack.npz"
    common = ["--data-spec", str(spec_file), "--data-root", str(data), "--image-size", "48", "--cache-dir", str(cache)]
    assert pack.main(common + ["--out", str(out), "--quality", "90"]) == 0
    meta, records, images = pack.load_pack(out)
    assert {r["part"] for r in records} == {"train", "val"}  # held-out parts never travel
    assert images.shape == (len(records), 48, 48) and images.dtype == np.uint8
    assert set(meta["fingerprints"]) >= {"synthetic/train", "volumes/val"}

    # A model trained from the pack alone (the data root is gone) records the pack's split and says where to
    # evaluate it; the card's fingerprints equal the pack's.
    model = tmp_path / "model"
    assert train.main(["--packed", str(out), "--data-root", str(tmp_path / "absent"), "--out", str(model),
                       "--epochs", "1", "--max-steps", "1", "--image-size", "48", "--workers", "1",
                       "--cache-dir", str(cache)]) == 0
    card = json.loads((model / "model_card.json").read_text())
    metrics = json.loads((model / "metrics.json").read_text())
    assert "held-out parts are not on this machine" in metrics["note"]
    assert {k: v for k, v in card["training"]["data_fingerprint"].items()} == meta["fingerprints"]
    # Where the data is, a re-fit evaluates every held-out part on the same split.
    refit = tmp_path / "refit"
    assert train.main(["--init-from", str(model), "--epochs", "0", "--out", str(refit), "--workers", "1",
                       "--data-spec", str(spec_file), "--data-root", str(data), "--cache-dir", str(cache)]) == 0
    refit_card = json.loads((refit / "model_card.json").read_text())
    assert refit_card["training"]["validation_fingerprint"] == card["training"]["validation_fingerprint"]
    assert {"synthetic_test", "volumes_test"} <= set(json.loads((refit / "metrics.json").read_text())["sets"])
    # The pack checks itself against a card; another split (seed) is refused.
    assert pack.main(common + ["--out", str(tmp_path / "p2.npz"), "--card", str(refit / "model_card.json")]) == 0
    assert pack.main(common + ["--out", str(tmp_path / "p3.npz"), "--seed", "7",
                               "--card", str(refit / "model_card.json")]) == 2
