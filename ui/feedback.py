"""Reader feedback on one result: agree / disagree, the class the reader reads, a short note.

``feedback_form`` draws the widgets and writes to the audit trail (``AuditTrail.record_feedback``), beside the
prediction. Disagreements are the site's own error cases; the metrics page lists and exports them.
"""
from __future__ import annotations

import re

import streamlit as st

from core.review.audit_trail import MAX_NOTE_CHARS, MAX_READER_CHARS, UNSURE, AuditTrail

VERDICT_LABELS = {"agree": ":material/thumb_up: Agree", "disagree": ":material/thumb_down: Disagree"}
NO_IDENTIFIERS = ("Do not type patient identifiers (name, ID, date of birth, accession number, dates of the "
                  "examination): the note is stored and exported as written.")
READER_KEY = "feedback_reader"  # the last reader name typed in this browser session, offered in every form
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~$:])")


def form_key(key: str, file_sha256: str, model_sha256: str) -> str:
    """Prefix of the form's widget keys: one form per file and model, so a new scan starts blank."""
    return f"{key}_{(file_sha256 or '')[:12]}_{(model_sha256 or '')[:8]}"


def class_label(name: str | None) -> str:
    return "Unsure / none of these" if name == UNSURE else (name or "")


def _md(text: str) -> str:
    """Reader text shown as markdown without being interpreted (no links, images or directives)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def describe(row: dict) -> str:
    """One markdown line about a stored feedback row: the verdict, the class read and the time. The reader's own
    words (note, name) are left out: show them with :func:`reader_words` as plain text."""
    if row.get("verdict") == "agree":
        what = "**Agree**"
    else:
        what = "**Disagree**" + (f" → reads *{_md(class_label(row['reader_class']))}*" if row.get("reader_class")
                                 else "")
    return f"{what} · {row.get('timestamp') or ''}"


def reader_words(row: dict) -> str:
    """The note and the reader's name, for ``st.text`` (never parsed as markdown: no links, icons or images)."""
    note, reader = row.get("note") or "", row.get("reader") or ""
    return (f"“{note}”" if note else "") + (" — " if note and reader else "") + reader


def _save(audit: AuditTrail, k: str, record: dict) -> None:
    """The Save button's callback: write, then clear the note for the next change of mind."""
    ss = st.session_state
    verdict = ss.get(f"{k}_verdict")
    if verdict not in VERDICT_LABELS:
        ss[f"{k}_error"] = "Choose *Agree* or *Disagree* first."
        return
    try:
        saved = audit.record_feedback(
            verdict=verdict, reader_class=ss.get(f"{k}_class") if verdict == "disagree" else None,
            note=ss.get(f"{k}_note") or "", reader=ss.get(f"{k}_reader") or "", **record)
    except ValueError as exc:
        ss[f"{k}_error"] = f"Feedback not saved: {exc}."
        return
    except Exception as exc:  # noqa: BLE001 - a locked or unwritable database must not raise in the page
        ss[f"{k}_error"] = f"Feedback not saved: the audit trail could not be written ({type(exc).__name__}: {exc})."
        return
    ss[f"{k}_saved"] = saved
    ss[f"{k}_note"] = ""
    ss[READER_KEY] = saved.get("reader") or ""


def feedback_form(audit: AuditTrail | None, *, key: str, file_sha256: str, model_sha256: str, model_version: str,
                  predicted: str, class_names: list[str], prediction_id: int | None = None) -> dict | None:
    """Draw the reader-feedback form for one result and save what the reader submits to ``audit``.

    Returns the stored feedback row (a dict of ``core.review.audit_trail.FEEDBACK_COLUMNS``: id, timestamp,
    prediction_id, file_sha256, model_sha256, model_version, predicted, verdict, reader_class, note, reader) in
    the run that follows a successful *Save*, else ``None``. Widget keys start with
    ``form_key(key, file_sha256, model_sha256)``: ``_verdict`` (segmented control), ``_class`` (selectbox, shown
    for a disagreement), ``_note``, ``_reader``, ``_save``. Never raises: errors are shown with ``st.error``.
    """
    k = form_key(key, file_sha256, model_sha256)
    saved = None
    with st.container(border=True):
        st.markdown(f"**Your read** · do you agree with *{_md(class_label(predicted))}*? Feedback is kept in the "
                    "audit trail beside this prediction; disagreements become the site's error cases.")
        if audit is None:
            st.info("Feedback cannot be saved: the audit trail is not available (see the sidebar).",
                    icon=":material/history_toggle_off:")
            return None
        try:
            ss = st.session_state
            saved = ss.pop(f"{k}_saved", None)
            error = ss.pop(f"{k}_error", None)
            record = dict(file_sha256=file_sha256, model_sha256=model_sha256, model_version=model_version,
                          predicted=predicted, prediction_id=prediction_id, class_names=list(class_names))
            verdict = st.segmented_control("Your read", list(VERDICT_LABELS), format_func=VERDICT_LABELS.get,
                                           key=f"{k}_verdict", label_visibility="collapsed")
            if verdict == "disagree":
                st.selectbox("Correct class (optional)", [c for c in class_names if c != predicted] + [UNSURE],
                             index=None, format_func=class_label, key=f"{k}_class",
                             placeholder="The class you read on this slice")
            st.text_area("Note (optional)", key=f"{k}_note", max_chars=MAX_NOTE_CHARS, height=80,
                         placeholder="What the model missed or got wrong (no patient identifiers)",
                         help=NO_IDENTIFIERS)
            st.caption(f":material/warning: {NO_IDENTIFIERS}")
            if f"{k}_reader" not in ss:
                ss[f"{k}_reader"] = ss.get(READER_KEY, "")
            c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
            c1.text_input("Reader (optional)", key=f"{k}_reader", max_chars=MAX_READER_CHARS,
                          placeholder="Your name or initials", help="Stored with the feedback, in the audit trail.")
            c2.button("Save feedback", key=f"{k}_save", type="primary", icon=":material/save:", width="stretch",
                      on_click=_save, args=(audit, k, record))
            if error:
                st.error(error, icon=":material/error:")
            if saved:
                st.toast("Feedback saved to the audit trail.", icon=":material/check_circle:")
                st.success("Feedback saved to the audit trail.", icon=":material/check_circle:")
            latest = audit.feedback_for(file_sha256, model_sha256, model_version, limit=1)
            if latest:
                st.caption(":material/history: Latest feedback on this result: " + describe(latest[0]))
                if reader_words(latest[0]):
                    st.text(reader_words(latest[0]))
        except Exception as exc:  # noqa: BLE001 - never a traceback in the page
            st.error(f"Reader feedback is unavailable: {type(exc).__name__}: {exc}", icon=":material/error:")
            return None
    return saved


def error_cases_frame(cases: list[dict]):
    """The site's error cases as a table: the newest disagreement of each result."""
    import pandas as pd

    return pd.DataFrame([{"time": r["timestamp"], "file SHA-256": (r["file_sha256"] or "")[:12],
                          "model version": r["model_version"] or "", "predicted": r["predicted"] or "",
                          "reader's class": class_label(r["reader_class"]), "note": r["note"] or "",
                          "reader": r["reader"] or ""} for r in cases],
                        columns=["time", "file SHA-256", "model version", "predicted", "reader's class", "note",
                                 "reader"])


def feedback_summary_view(audit: AuditTrail) -> None:
    """Metrics page, Audit trail tab: counts of current verdicts, the site's error cases and their exports."""
    try:
        counts = audit.feedback_counts()
        cases = audit.error_cases()
    except Exception as exc:  # noqa: BLE001 - never a traceback in the page
        st.error(f"Reader feedback could not be read: {type(exc).__name__}: {exc}", icon=":material/error:")
        return
    st.markdown("**Reader feedback.** Readers agree or disagree with a result on the *Single scan* and *Batch "
                "review* pages; the newest verdict on each result counts. Disagreements are this site's own error "
                "cases: export them to review or to build a local test set.")
    c = st.columns(3)
    c[0].metric("Results readers agree with", f"{counts['agree']:,}")
    c[1].metric("Results readers disagree with", f"{counts['disagree']:,}")
    c[2].metric("Feedback entries (all, append-only)", f"{counts['rows']:,}")
    if cases:
        st.markdown(f"**Site error cases** ({len(cases):,}, newest first; full SHA-256 in the CSV)")
        st.dataframe(error_cases_frame(cases), hide_index=True, width="stretch", key="audit_error_cases",
                     column_config={"note": st.column_config.TextColumn(width="large")})
    else:
        st.caption("No disagreements yet.")
    c1, c2 = st.columns(2)
    c1.download_button("Export site error cases (CSV)", audit.export_error_cases_csv, "site_error_cases.csv",
                       "text/csv", on_click="ignore", icon=":material/download:", key="feedback_cases_export",
                       disabled=not cases)
    c2.download_button("Export all reader feedback (CSV)", audit.export_feedback_csv, "reader_feedback.csv",
                       "text/csv", on_click="ignore", icon=":material/download:", key="feedback_export",
                       disabled=not counts["rows"])
