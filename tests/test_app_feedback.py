"""AppTest: reader feedback (agree / disagree, the class read, a note) is saved to the audit trail beside the
prediction, and the metrics page lists the disagreements as the site's error cases."""
from __future__ import annotations

import csv
import io

import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, all_text, make_app_env
from core.review.audit_trail import AuditTrail
from ui.feedback import NO_IDENTIFIERS, form_key

TIMEOUT = 120
CLASSES = ["glioma", "meningioma", "notumor", "other_lesion", "pituitary"]
FILE_SHA, MODEL_SHA = "ab" * 32, "cd" * 32
K = form_key("t", FILE_SHA, MODEL_SHA)

# A page holding only the form; the test puts the database path (or None) and a failure switch in session state.
SCRIPT = f"""
import sqlite3
import streamlit as st
from core.review.audit_trail import AuditTrail
from ui.feedback import feedback_form

class Broken(AuditTrail):
    def record_feedback(self, **kw):
        raise sqlite3.OperationalError("database is locked")

db = st.session_state.get("db")
audit = None if db is None else (Broken if st.session_state.get("broken") else AuditTrail)(db)
saved = feedback_form(audit, key="t", file_sha256="{FILE_SHA}", model_sha256="{MODEL_SHA}", model_version="2.0.0",
                      predicted="glioma", class_names={CLASSES!r}, prediction_id=st.session_state.get("pid"))
if saved is not None:
    st.session_state["saved_runs"] = st.session_state.get("saved_runs", 0) + 1
    st.session_state["last_saved"] = saved
"""


def form_app(db=None, **state) -> AppTest:
    at = AppTest.from_string(SCRIPT, default_timeout=TIMEOUT)
    at.session_state["db"] = None if db is None else str(db)
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def _prediction(audit: AuditTrail, sha: str = FILE_SHA, predicted: str = "glioma") -> int:
    return audit.record(source="single", file_sha256=sha, model_sha256=MODEL_SHA, model_version="2.0.0",
                        predicted=predicted, confidence=0.81, probabilities={c: 0.2 for c in CLASSES}, ood=False,
                        uncertain=False, cam_method="gradcam")


def test_disagree_with_class_and_note_is_stored_beside_the_prediction(tmp_path):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    pid = _prediction(audit)
    at = form_app(audit.path, pid=pid)
    assert not at.exception and not at.error
    assert NO_IDENTIFIERS in all_text(at) and NO_IDENTIFIERS == at.text_area(key=f"{K}_note").help
    assert not at.selectbox  # the class is asked for a disagreement only
    at.segmented_control(key=f"{K}_verdict").set_value("disagree").run()
    pick = at.selectbox(key=f"{K}_class")
    assert "glioma" not in pick.options and "unsure" not in pick.options  # shown as "Unsure / none of these"
    assert pick.options[-1].startswith("Unsure")
    pick.set_value("meningioma")
    at.text_area(key=f"{K}_note").input("Dural tail on T1C+; extra-axial.")
    at.text_input(key=f"{K}_reader").input("Dr A")
    at.button(key=f"{K}_save").click().run()
    assert not at.exception and not at.error
    rows = audit.feedback_for(FILE_SHA, MODEL_SHA)
    assert len(rows) == 1
    row = rows[0]
    assert (row["prediction_id"], row["verdict"], row["reader_class"], row["note"], row["reader"]) == (
        pid, "disagree", "meningioma", "Dural tail on T1C+; extra-axial.", "Dr A")
    assert (row["model_version"], row["predicted"]) == ("2.0.0", "glioma")
    assert at.session_state["last_saved"] == row and at.session_state["saved_runs"] == 1  # the function returns it
    assert any("Feedback saved" in s.value for s in at.success) and at.toast
    assert at.text_area(key=f"{K}_note").value == ""  # ready for a change of mind
    export = list(csv.DictReader(io.StringIO(audit.export_csv())))
    assert (export[0]["feedback_verdict"], export[0]["feedback_class"]) == ("disagree", "meningioma")
    # Next run: nothing is saved twice, and the latest feedback is shown.
    at.run()
    assert at.session_state["saved_runs"] == 1 and len(audit.feedback()) == 1
    assert any("Latest feedback on this result" in c.value and "meningioma" in c.value for c in at.caption)
    assert "“Dural tail on T1C+; extra-axial.” — Dr A" in [t.value for t in at.text]  # plain text, not markdown
    # A change of mind is a new row; the newest one wins.
    at.segmented_control(key=f"{K}_verdict").set_value("agree").run()
    assert not at.selectbox
    at.button(key=f"{K}_save").click().run()
    assert [r["verdict"] for r in audit.feedback_for(FILE_SHA, MODEL_SHA)] == ["agree", "disagree"]
    assert audit.feedback_counts() == {"agree": 1, "disagree": 0, "rows": 2}
    assert at.text_input(key=f"{K}_reader").value == "Dr A"


def test_save_without_a_verdict_says_what_to_do(tmp_path):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    at = form_app(audit.path)
    at.button(key=f"{K}_save").click().run()
    assert not at.exception and any("Choose *Agree* or *Disagree* first" in e.value for e in at.error)
    assert audit.feedback() == []


def test_no_audit_trail_and_a_failing_database_give_messages_not_tracebacks(tmp_path):
    at = form_app(None)
    assert not at.exception and any("audit trail is not available" in i.value for i in at.info)
    assert not at.button
    at = form_app(tmp_path / "audit.sqlite3", broken=True)
    at.segmented_control(key=f"{K}_verdict").set_value("agree").run()
    at.button(key=f"{K}_save").click().run()
    assert not at.exception and any("database is locked" in e.value for e in at.error)
    assert "saved_runs" not in at.session_state


@pytest.fixture
def app_env(tiny_bundle_dir, tmp_path, monkeypatch):
    return make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)


def test_metrics_page_lists_disagreements_as_site_error_cases(app_env):
    audit = AuditTrail(app_env.audit_path)
    agreed, wrong = _prediction(audit, "12" * 32, "notumor"), _prediction(audit)
    audit.record_feedback(file_sha256="12" * 32, model_sha256=MODEL_SHA, verdict="agree", prediction_id=agreed)
    audit.record_feedback(file_sha256=FILE_SHA, model_sha256=MODEL_SHA, verdict="disagree", reader_class="pituitary",
                          note="Sellar mass, see coronal", reader="Dr B", prediction_id=wrong)
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("pages/3_Model_metrics.py").run()
    at.session_state["metrics_tab"] = "Audit trail"
    at.run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Results readers agree with"] == "1" and metrics["Results readers disagree with"] == "1"
    cases = next(d.value for d in at.dataframe if "reader's class" in d.value.columns)
    assert len(cases) == 1
    case = cases.iloc[0]
    assert (case["file SHA-256"], case["model version"], case["predicted"], case["reader's class"], case["note"]) == (
        FILE_SHA[:12], "2.0.0", "glioma", "pituitary", "Sellar mass, see coronal")
    labels = [b.label for b in at.get("download_button")]
    assert {"Export site error cases (CSV)", "Export all reader feedback (CSV)",
            "Export audit trail (CSV)"} <= set(labels)
    recent = at.dataframe[-1].value  # the predictions table stays the last one on the tab
    assert len(recent) == 2 and set(recent["source"]) == {"single"}
