"""The model registry (core.model.registry) and the dashboard's model picker."""
from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, all_text, make_app_env, scan_png, type_sequence_bundle

TIMEOUT = 180


@pytest.fixture(scope="module")
def registry(tiny_bundle_dir, tmp_path_factory):
    """weights/ holding the default bundle, and weights/typeseq/ a nine-class "<type> <sequence>" one."""
    root = tmp_path_factory.mktemp("registry") / "weights"
    shutil.copytree(tiny_bundle_dir, root)
    type_sequence_bundle(tiny_bundle_dir, root / "typeseq")
    (root / "notes").mkdir()  # a folder without a model card is not a model
    return root


def test_models_are_found_from_their_cards(registry):
    from core.model.checkpoint import load_bundle
    from core.model.registry import find_model, list_models

    models = list_models(registry)
    assert [m.default for m in models] == [True, False]
    default, other = models
    assert other.name == "tiny-type-sequence" and len(other.class_names) == 9 and other.path == registry / "typeseq"
    assert other.short_sha == load_bundle(other.path).sha256[:12]
    assert "classes" in other.label and other.short_sha in other.label
    assert find_model(registry, None) == registry
    assert find_model(registry, "tiny-type-sequence") == find_model(registry, "typeseq") == registry / "typeseq"
    with pytest.raises(ValueError, match="no model named 'nope'.*tiny-type-sequence"):
        find_model(registry, "nope")
    assert list_models(registry / "typeseq")[0].default  # a bundle folder on its own is a one-model registry


def test_picker_switches_every_page_to_the_chosen_model(registry, tmp_path, monkeypatch):
    env = make_app_env(tmp_path, registry, monkeypatch)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    picker = at.sidebar.selectbox(key="model_pick")
    assert len(picker.options) == 2
    at.file_uploader(key="single_upload").set_value(("scan.png", scan_png(), "image/png")).run()
    assert "Top 5" not in all_text(at)  # the default model: every class
    picker.set_value(str(registry / "typeseq")).run()
    assert not at.exception and not at.error
    text = all_text(at)
    assert "tiny-type-sequence" in "\n".join(str(m.value) for m in at.sidebar.markdown)
    assert "Top 5 of 9 classes" in text and "Implied type" in text and "sequence" in text
    assert at.metric[0].value.split(" (")[0] in {f"{t} {q}" for t in ("Astrocitoma", "Meningioma", "_NORMAL")
                                                 for q in ("T1", "T1C+", "T2")}
    from core.review.audit_trail import AuditTrail
    from core.model.checkpoint import load_bundle

    logged = {r["model_sha256"] for r in AuditTrail(env.audit_path).recent(10)}
    assert logged == {load_bundle(registry).sha256, load_bundle(registry / "typeseq").sha256}
    at.switch_page("pages/3_Model_metrics.py").run()
    at.session_state["metrics_tab"] = "Set details"
    at.run()
    assert not at.exception
    text = all_text(at)
    assert "Merged views" in text and "Tumour type accuracy" in text and "recall 95% CI" in text


def test_cli_picks_a_model_by_name(registry, tmp_path, capsys):
    from app_support import make_labelled_folder
    from core import batch
    from core import evaluate

    folder = make_labelled_folder(tmp_path / "set", per_class=1, corrupt=False)
    out = tmp_path / "rows.csv"
    assert batch.main([str(folder), "--weights", str(registry), "--model", "tiny-type-sequence", "--out", str(out),
                       "--no-audit", "--device", "cpu"]) == 0
    header = out.read_text().splitlines()[0]
    assert "p_Astrocitoma T1C+" in header and "p_glioma" not in header
    assert batch.main([str(folder), "--weights", str(registry), "--model", "nope", "--out", str(out),
                       "--no-audit"]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
    # the default bundle without --model, as before
    assert evaluate.main([str(folder), "--weights", str(registry), "--device", "cpu"]) == 0
    assert evaluate.main([str(folder), "--weights", str(registry), "--model", "typeseq", "--device", "cpu"]) == 2
    assert "none of the class folders" in capsys.readouterr().err  # its classes are not the folder's
