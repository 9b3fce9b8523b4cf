"""AppTest: the model metrics page."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, CORRUPT_NAME, all_text, always_no_tumour_bundle, make_app_env, make_labelled_folder, scan_png
from core.model.card import ModelCard

TIMEOUT = 180
PAGE = "pages/3_Model_metrics.py"


@pytest.fixture
def app_env(tiny_bundle_dir, tmp_path, monkeypatch):
    return make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)


def metrics_page(tab: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(PAGE).run()
    if tab:
        at.session_state["metrics_tab"] = tab
        at.run()
    assert not at.exception and at.title[0].value == "Model metrics"
    return at


def test_tumours_read_as_no_tumour_are_called_out(tiny_bundle_dir, tmp_path, monkeypatch):
    make_app_env(tmp_path, always_no_tumour_bundle(tiny_bundle_dir, tmp_path / "model"), monkeypatch)
    at = metrics_page()
    missed = next(str(w.value) for w in at.warning if "read as no tumour" in str(w.value))
    assert "2 of 10" in missed and "1 of them at or above the 60%" in missed and "given a tumour class: 1 of 3" in missed


def test_held_out_parts_render_per_source(app_env):
    metrics = json.loads((app_env.weights / "metrics.json").read_text())
    at = metrics_page()
    overview = at.dataframe[0].value
    held = [k for k, m in metrics["sets"].items() if m.get("part") == "test"]
    assert list(overview["set"]) == [metrics["sets"][k]["title"] for k in held]
    assert overview["images"].tolist() == [metrics["sets"][k]["n"] for k in held]
    assert {"tumour sensitivity", "specificity", "confident misses", "pointing game"} <= set(overview.columns)
    vol = overview.set_index("set").loc["Synthetic volumes held-out"]
    assert vol["pointing game"] == pytest.approx(metrics["sets"]["volumes_test"]["pointing_game"]["rate"])
    at.session_state["metrics_tab"] = "Set details"
    at.run()
    first = metrics["sets"][held[0]]
    text = all_text(at)
    assert f"{first['accuracy']:.1%}" in text and "95% CI" in text and "Tumour sensitivity" in text
    assert len(at.get("plotly_chart")) == 3  # confusion matrix, ROC, reliability
    at.toggle(key=f"{held[0]}_cm_norm").set_value(True).run()
    assert not at.exception
    at.selectbox(key="set_pick").set_value("volumes_test").run()
    assert "pointing game" in all_text(at).lower() and not at.exception


@pytest.mark.parametrize("tab,expect", [
    ("Data audit", "Test images also in training"),
    ("Model card", "Training command"),
    ("By source", "Validation parts"),
    ("Misclassified", "misclassified"),
    ("Targets", "pointing game"),
])
def test_other_tabs_render(app_env, tab, expect):
    at = metrics_page(tab)
    assert expect.lower() in all_text(at).lower()
    assert not at.error


def test_model_card_shows_command_fingerprint_and_intended_use(app_env):
    card = json.loads((app_env.weights / "model_card.json").read_text())
    at = metrics_page("Model card")
    text = all_text(at)
    assert card["training"]["command"] in text
    assert card["training"]["data_fingerprint"]["synthetic/test"] in text
    assert "not for diagnosis" in text.lower()
    assert card["architecture"]["name"] in text


def test_reevaluate_labelled_folder_with_corrupted_file(app_env):
    make_labelled_folder(app_env.root / "eval", per_class=2)
    at = metrics_page("Re-evaluate")
    at.text_input(key="reeval_folder").input("eval").run()
    at.button(key="reeval_start").click().run()
    assert not at.exception and not at.error
    assert any("8 images" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 3
    assert any("unreadable" in e.label for e in at.expander)
    assert CORRUPT_NAME in all_text(at)
    # refused outside the allowed roots, with a message
    at.text_input(key="reeval_folder").input("/etc").run()
    at.button(key="reeval_start").click().run()
    assert any("Folder refused" in e.value for e in at.error)
    # not a labelled tree
    (app_env.root / "flat").mkdir()
    at.text_input(key="reeval_folder").input("flat").run()
    at.button(key="reeval_start").click().run()
    assert any("none of the class folders" in e.value for e in at.error)
    assert not at.exception


def test_audit_trail_panel_lists_and_exports_predictions(app_env):
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.file_uploader(key="single_upload").set_value(("scan.png", scan_png(), "image/png")).run()
    at.switch_page(PAGE).run()
    at.session_state["metrics_tab"] = "Audit trail"
    at.run()
    recent = at.dataframe[-1].value
    assert len(recent) == 1 and recent.iloc[0]["source"] == "single"
    assert len(recent.iloc[0]["file_sha256"]) == 64 and len(recent.iloc[0]["model_sha256"]) == 64
    assert "Export audit trail (CSV)" in [b.label for b in at.get("download_button")]


def test_missing_metrics_file_still_renders(app_env, tmp_path, monkeypatch):
    folder = tmp_path / "no-metrics"
    shutil.copytree(app_env.weights, folder)
    (folder / "metrics.json").unlink()
    monkeypatch.setenv("MRI_WEIGHTS_DIR", str(folder))
    at = metrics_page()
    assert any("No readable `metrics.json`" in w.value for w in at.warning)
    assert not at.exception


def test_a_mirror_averaged_model_says_so_in_the_sidebar_and_its_card(tiny_bundle_dir, tmp_path, monkeypatch):
    app_env = make_app_env(tmp_path, shutil.copytree(tiny_bundle_dir, tmp_path / "weights"), monkeypatch)
    card_path = app_env.weights / "model_card.json"
    card = json.loads(card_path.read_text())
    parent_sha = card["weights"]["sha256"]
    card["inference"] = {"tta": "hflip"}
    card["training"].update(epochs_run=0, init_from={"sha256": parent_sha, "command": "python train.py"})
    card_path.write_text(json.dumps(card))
    at = metrics_page("Model card")
    assert any("mirror-averaged" in m.value for m in at.sidebar.markdown)
    text = all_text(at)
    assert "Test-time augmentation." in text and f"unchanged from {parent_sha[:12]}" in text
    assert not at.error


def test_stress_test_tab_shows_the_report_only_for_the_loaded_model(tiny_bundle_dir, tmp_path, monkeypatch):
    from tools import shift_eval

    app_env = make_app_env(tmp_path, shutil.copytree(tiny_bundle_dir, tmp_path / "weights"), monkeypatch)
    at = metrics_page("Stress test")
    assert "no stress-test report for this model" in all_text(at).lower()
    # The report for this model (found beside its weights) is drawn as a table, one row per change.
    card = json.loads((app_env.weights / "model_card.json").read_text())
    shifts = {k: {"description": d, "n": 10, "unreadable": 0, "accuracy": 0.9 if k == "none" else 0.8,
                  "macro_f1": 0.8, "ood_flagged_rate": 0.1} for k, (d, _) in shift_eval.SHIFTS.items()}
    report = {"model": ModelCard.from_dict(card).identity, "data": "/home/someone/other-machine/brain-tumor-mri/Testing",
              "shifts": shifts}
    (app_env.weights / "shift_eval.json").write_text(json.dumps(report))
    at = metrics_page("Stress test")
    table = at.dataframe[-1].value
    assert len(table) == len(shift_eval.SHIFTS) and table["Δ accuracy"].iloc[1] == "-0.100"
    assert table["Δ accuracy"].iloc[0] == "reference" and table["Δ accuracy"].notna().all()  # never "None"
    text = all_text(at)
    assert "`brain-tumor-mri/Testing`" in text and "/home/someone" not in text  # no other machine's path
    assert not at.error
    # Same weights re-fitted under another test-time augmentation (train.py --epochs 0): not this report's model.
    card["inference"] = {"tta": "hflip"}
    (app_env.weights / "model_card.json").write_text(json.dumps(card))
    assert "no stress-test report for this model" in all_text(metrics_page("Stress test")).lower()


def test_misclassified_images_open_in_single_scan(app_env):
    """Each misclassified image whose file is on this machine has an "Open in Single scan" button."""
    at = metrics_page("Misclassified")
    buttons = [b for b in at.button if b.key and b.key.startswith("mis_open_")]
    assert buttons and all(b.label == "Open in Single scan" for b in buttons)
    first = buttons[0]
    name = first.key[len("mis_open_"):]
    first.click().run()
    assert not at.exception and at.title[0].value == "Single scan"
    selected = at.session_state["selected_file"]
    assert selected["label"] == name and Path(selected["path"]).is_file()
    # the single-scan page analyses that file although it is not a row of a batch review
    assert not at.error and at.metric and name in all_text(at)
    assert "Opened from *Model metrics*" in all_text(at)
    at.button(key="single_close_opened").click().run()
    assert "selected_file" not in at.session_state and not at.exception


def test_data_audit_tab_counts_the_ct_slices_of_the_kaggle_set(app_env):
    """reports/kaggle_ct_audit.json (committed; labels and counts only) is shown on the Data audit tab."""
    report = json.loads((Path(__file__).resolve().parent.parent / "reports" / "kaggle_ct_audit.json").read_text())
    at = metrics_page("Data audit")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["CT files"] == f"{report['non_mri']['CT']['files']:,}"
    assert metrics["Flagged outside intended use"].endswith(f"of {report['non_mri']['CT']['files']:,}")
    assert "Non-MRI slices in the Kaggle set" in all_text(at) and not at.error
