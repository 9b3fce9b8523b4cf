"""tools.validation_split rebuilds exactly the validation files a model was selected on, or refuses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    import train

    base = tmp_path_factory.mktemp("vsplit")
    data, out, cache = base / "data", base / "w", base / "cache"
    train.make_synthetic_dataset(data, per_class=12, seed=0)
    assert train.main(["--data-root", str(data), "--out", str(out), "--epochs", "1", "--max-steps", "1",
                       "--image-size", "48", "--workers", "1", "--cache-dir", str(cache)]) == 0
    return data, out, cache


def _run(data: Path, weights: Path, cache: Path, out: Path) -> int:
    from tools import validation_split

    return validation_split.main(["--weights", str(weights), "--data-root", str(data), "--out", str(out),
                                  "--cache-dir", str(cache), "--workers", "1"])


def test_rebuilds_the_validation_files_of_the_card(trained, tmp_path):
    from core.data.dataset import class_names_of, fingerprint, index_tree
    from core.preprocess import PreprocessSpec

    data, weights, cache = trained
    card = json.loads((weights / "model_card.json").read_text())
    tree = tmp_path / "val"
    assert _run(data, weights, cache, tree) == 0
    links = sorted(p for p in tree.rglob("*") if p.is_file())
    assert len(links) == card["training"]["val_files"]
    for link in links:  # each link points at the Training file of the same class and name
        assert link.is_symlink() and link.resolve() == (data / "Training" / link.relative_to(tree)).resolve()
    # The tree, indexed like any labelled folder, has the card's fingerprint.
    records, _ = index_tree(tree, class_names_of(data / "Training"), PreprocessSpec(image_size=48), None, 1)
    assert fingerprint(records) == card["training"]["validation_fingerprint"]


def test_refuses_a_card_it_cannot_verify(trained, tmp_path, capsys):
    import shutil

    data, weights, cache = trained
    assert _run(data, weights, cache, tmp_path) == 2  # existing output folder
    assert "already exists" in capsys.readouterr().err
    other = tmp_path / "w"
    shutil.copytree(weights, other)
    card = json.loads((other / "model_card.json").read_text())
    card["training"]["validation_fingerprint"] = "0" * 64
    (other / "model_card.json").write_text(json.dumps(card))
    assert _run(data, other, cache, tmp_path / "a") == 2
    assert "does not match the card's validation fingerprint" in capsys.readouterr().err
    del card["training"]["validation_fingerprint"]
    (other / "model_card.json").write_text(json.dumps(card))
    assert _run(data, other, cache, tmp_path / "b") == 2
    assert "no training.validation_fingerprint" in capsys.readouterr().err
