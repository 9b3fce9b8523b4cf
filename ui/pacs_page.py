"""The PACS page: search the configured PACS, pick a study and a series, review it, send the results back.

Only a signed-in user (``ui.auth``) sees anything from the PACS. The search results show the patient name and id,
since that is how a reader picks a study; everything after that (the study view, downloads, the audit trail)
names the study by its Study Instance UID and the app's hashed key (``core.pacs.workflow.study_key``) only.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import streamlit as st

from core.pacs import workflow as wf
from core.pacs.client import PacsConfig, PacsError, search_series, search_studies
from ui import auth, state

HITS, SERIES, REVIEW, STATUS = "pacs_hits", "pacs_series_cache", "pacs_review", "pacs_status"
STATUS_TEXT = {None: "not reviewed", "reviewed": "reviewed", "sent": "sent"}
IMAGE_MODALITIES = ("MR",)  # what the model reads; other series (our own SR/OT/DOC results) are listed, not offered
MODALITIES = ("MR", "any")


@dataclass
class PacsReview:
    """One reviewed series, kept in the session (one at a time, so memory stays flat over many studies)."""

    retrieved: wf.RetrievedSeries
    review: object  # core.inference.study.SeriesReview
    key_overlays: list
    label: str
    method: str
    sent: list[dict] | None = None
    cams: OrderedDict = field(default_factory=OrderedDict)


AUDIT_WARNING = "pacs_audit_warning"  # kept across the rerun that follows a review or a send


def _audit(ctx, user: str, action: str, **kw) -> None:
    if ctx.audit is None:
        st.session_state[AUDIT_WARNING] = f"The audit trail is unavailable: this {action} was not recorded."
        return
    try:
        ctx.audit.record_pacs_event(user=user, action=action, **kw)
    except Exception as exc:  # noqa: BLE001 - logging must not hide the result
        st.session_state[AUDIT_WARNING] = (f"This {action} could not be written to the audit trail "
                                           f"({type(exc).__name__}: {exc}).")


def _statuses(ctx, uids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if ctx.audit is not None:
        try:
            out.update(ctx.audit.pacs_status(uids))
        except Exception:  # noqa: BLE001 - the session's own record below still counts
            pass
    for uid, status in st.session_state.get(STATUS, {}).items():
        if uid in uids and out.get(uid) != "sent":
            out[uid] = status
    return out


def _mark(uid: str, status: str) -> None:
    marks = st.session_state.setdefault(STATUS, {})
    if marks.get(uid) != "sent":
        marks[uid] = status


# -- search ---------------------------------------------------------------------------------------------------

def _search(ctx, pacs: PacsConfig, user: str) -> None:
    with st.form("pacs_search_form"):
        c1, c2, c3, c4, c5 = st.columns([1.2, 1.2, 0.8, 1, 1])
        patient_id = c1.text_input("Patient ID", key="pacs_patient_id")
        accession = c2.text_input("Accession number", key="pacs_accession")
        modality = c3.selectbox("Modality", MODALITIES, key="pacs_modality")
        date_from = c4.date_input("Study date from", value=None, key="pacs_date_from", format="YYYY-MM-DD")
        date_to = c5.date_input("Study date to", value=None, key="pacs_date_to", format="YYYY-MM-DD")
        submitted = st.form_submit_button("Search", icon=":material/search:", key="pacs_search")
    if not submitted:
        return
    if date_from and date_to and date_from > date_to:
        st.error("The start date is after the end date.", icon=":material/event_busy:")
        return
    try:
        with st.spinner("Searching the PACS…"):
            hits = search_studies(pacs, patient_id=patient_id.strip() or None, date_from=date_from, date_to=date_to,
                                  modality=None if modality == "any" else modality,
                                  accession=accession.strip() or None)
    except PacsError as exc:
        st.error(f"**The search failed.** {exc}", icon=":material/cloud_off:")
        return
    st.session_state[HITS] = hits
    st.session_state.pop("pacs_study", None)
    # The filters by name only (a patient id is identifying); dates and modality are not.
    used = [name for name, v in (("patient_id", patient_id.strip()), ("accession", accession.strip())) if v]
    _audit(ctx, user, "query", detail={"filters": used, "modality": modality, "hits": len(hits),
                                       "date_from": date_from.isoformat() if date_from else None,
                                       "date_to": date_to.isoformat() if date_to else None})


def _results(ctx, hits: list) -> object | None:
    if not hits:
        st.info("No study matches the search.", icon=":material/search_off:")
        return None
    status = _statuses(ctx, [h.study_uid for h in hits])
    table = pd.DataFrame([{
        "patient name": str(h.patient_name).replace("^", " ").strip(), "patient ID": h.patient_id,
        "study date": h.study_date, "accession": h.accession, "description": h.description,
        "modalities": ", ".join(h.modalities), "series": h.n_series, "status": STATUS_TEXT[status.get(h.study_uid)],
    } for h in hits])
    st.markdown(f"**{len(hits)} stud{'y' if len(hits) == 1 else 'ies'} found** (patient details are shown here "
                "only, to pick a study; they are not kept)")
    with st.container(key="pacs_results_box"):  # the class .st-key-pacs_results_box, for the browser test
        st.dataframe(table, hide_index=True, width="stretch", key="pacs_results")
    choice = st.selectbox("Study to open", range(len(hits)), key="pacs_study",
                          format_func=lambda i: f"Row {i + 1}: {hits[i].study_date or 'no date'} · "
                                                f"{hits[i].description or 'no description'}")
    return hits[min(choice or 0, len(hits) - 1)]


def _series(ctx, pacs: PacsConfig, study) -> list:
    cache = st.session_state.setdefault(SERIES, OrderedDict())
    if study.study_uid not in cache:
        try:
            with st.spinner("Listing the study's series…"):
                cache[study.study_uid] = search_series(pacs, study.study_uid)
        except PacsError as exc:
            st.error(f"**The series could not be listed.** {exc}", icon=":material/cloud_off:")
            return []
        while len(cache) > 20:
            cache.popitem(last=False)
    return cache[study.study_uid]


# -- review ---------------------------------------------------------------------------------------------------

def _retrieve_and_review(ctx, pacs: PacsConfig, user: str, study_uid: str, hit) -> None:
    predictor = ctx.predictor
    st.session_state.pop(REVIEW, None)  # one reviewed series per session: free the last one first
    try:
        with st.spinner(f"Retrieving {hit.n_instances or ''} images from the PACS…"):
            retrieved = wf.retrieve_for_review(pacs, study_uid, hit.series_uid)
        bar = st.progress(0.0, text="Predicting every slice…")
        review = wf.review(predictor, retrieved,
                           progress=lambda done, n: bar.progress(done / n, text=f"Predicted {done} of {n} slices"))
        bar.empty()
        method = predictor.bundle.card.explanation.method or "gradcam"
        with st.spinner("Drawing the key slices' heatmaps…"):
            key_overlays = wf.overlays(ctx.explainer, retrieved, review, method)
    except (PacsError, wf.ReviewError) as exc:
        st.error(f"**The series could not be reviewed.** {exc}", icon=":material/broken_image:")
        return
    except Exception as exc:  # noqa: BLE001 - never a traceback in the page
        st.error(f"**The series could not be reviewed** ({type(exc).__name__}: {exc}).", icon=":material/error:")
        return
    label = retrieved.series.name  # series number and description (core.io.series_dicom): never a patient tag
    st.session_state[REVIEW] = PacsReview(retrieved, review, key_overlays, label, method)
    _mark(study_uid, "reviewed")
    bundle = predictor.bundle
    if ctx.audit is not None:
        try:  # the prediction, as the Study review page logs it (content hash; no name or tag)
            ctx.audit.record(source="pacs", file_sha256=retrieved.series.key, model_sha256=bundle.sha256,
                             model_version=bundle.version, predicted=review.verdict_text(),
                             confidence=float(review.tumour_prob.max(initial=0.0)), ood=review.series_ood,
                             uncertain=review.uncertain)
        except Exception as exc:  # noqa: BLE001
            st.warning(f"The review could not be written to the audit trail: {exc}")
    _audit(ctx, user, "review", study_uid=study_uid, series_uid=hit.series_uid, study_key=retrieved.key,
           detail={"verdict": review.verdict_text(), "slices": review.n_slices, "series_sha256": retrieved.series.key,
                   "model_sha256": bundle.sha256, "model_version": bundle.version})
    st.rerun()  # draw the page again: the results table's status column now says "reviewed"


def _finding_for_report(pr: PacsReview):
    from core.report.sr import SeriesFinding

    r = pr.review
    try:
        return wf.finding(r, pr.retrieved.slice_sops)
    except wf.ReviewError:  # outside intended use: the report says so in its rule line
        return SeriesFinding(False, None, float(np.clip(r.tumour_prob.max(initial=0.0), 0, 1)), [])


def _pdf(ctx, pr: PacsReview) -> bytes:
    """The series report (``core.report.pdf.study_pdf``): labelled by study key and series, never the patient."""
    from core.report.pdf import KeyImage, study_pdf
    from core.report.sr import ModelIdentity
    from ui import views

    r = pr.review
    images = [KeyImage(f"Slice {k + 1} of {r.n_slices}: tumour probability {r.tumour_prob[k]:.1%}", rgb)
              for k, rgb in pr.key_overlays]
    return study_pdf(_finding_for_report(pr), ModelIdentity.from_card(ctx.predictor.bundle.card),
                     views.metrics_for(ctx.predictor.bundle, ctx.weights_dir), r.n_slices, key_images=images,
                     rule=f"{r.verdict_text()}. Rule: {r.rule.describe()}.",
                     series_label=f"study key {pr.retrieved.key[:16]}, {pr.label}, {r.n_slices} axial slices")


def _slice_view(ctx, pr: PacsReview) -> None:
    from core.explain.cam import overlay
    from core.explain.study_cams import slice_cam

    r = pr.review
    first = pr.key_overlays[0][0] if pr.key_overlays else r.n_slices // 2
    shown = st.slider("Slice (1 = most inferior)", 1, r.n_slices, first + 1,
                      key=f"pacs_slice_{pr.retrieved.series.key[:12]}") - 1
    if shown not in pr.cams:
        try:
            cam, item = slice_cam(ctx.explainer, pr.retrieved.series, r, shown, pr.method)
            pr.cams[shown] = overlay(item, cam.heatmap)
        except Exception as exc:  # noqa: BLE001
            st.error(f"The heatmap could not be computed ({type(exc).__name__}: {exc}).", icon=":material/error:")
            return
        while len(pr.cams) > 8:
            pr.cams.popitem(last=False)
    line = ("blank slice (no signal): not predicted" if r.blank[shown] else
            f"tumour probability {r.tumour_prob[shown]:.1%}" + (" · positive" if r.positive[shown] else "")
            + (" · outside intended use" if r.ood[shown] else ""))
    left, right = st.columns([1, 1])
    left.image(pr.retrieved.series.decoded_slice(shown, "axial", r.scale).pixels, clamp=True,
               caption=f"Slice {shown + 1} of {r.n_slices}", width="stretch")
    right.image(pr.cams[shown], caption=f"Heatmap ({pr.method}): {line}", width="stretch")


def _study_view(ctx, pacs: PacsConfig, user: str, pr: PacsReview) -> None:
    from ui.study_view import record_json, series_record, slice_table, strip_chart

    r, key = pr.review, pr.retrieved.key
    s = r.summary()
    with st.container(border=True, key="pacs_study_view"):
        st.subheader(f"Study review · {pr.label}", anchor=False)
        st.caption(f"Study Instance UID `{pr.retrieved.study_uid}` · study key `{key[:16]}` · {r.n_slices} axial "
                   f"slices from {pr.retrieved.n_files} images")
        st.warning(f"**{state.RESEARCH_NOTICE}** The series verdict is a rule over slice results, not a reading.",
                   icon=":material/science:")
        c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
        c1.metric("Series verdict", r.verdict_text() + (" (uncertain)" if r.uncertain else ""))
        c2.metric("Positive slices", f"{s['positive_range'][0]}–{s['positive_range'][1]}" if s["positive_range"]
                  else "none")
        c3.metric("Highest tumour probability", f"{s['max_tumour_probability']:.1%}")
        c4.metric("Top slices", ", ".join(map(str, s["top_slices"][:3])) or "–")
        st.caption(f"**Rule:** {r.rule.describe()}.")
        if r.series_ood:
            st.error("**Outside intended use.** Over half of this series' slices do not look like the brain MRI "
                     "slices the model was trained on, so the verdict is not meaningful and nothing can be sent.",
                     icon=":material/report:")
        elif not r.tumour:
            st.info("**\"No tumour found\" is not a negative read.** Read the whole series.",
                    icon=":material/visibility_off:")
        if pr.retrieved.slice_sops is None:
            st.info("The slices do not map one to one onto the series' images (another plane, a localiser, or no "
                    "geometry): the report references every image and no overlay is stored.", icon=":material/info:")
        st.plotly_chart(strip_chart(r, (pr.key_overlays[0][0] if pr.key_overlays else 0)), key="pacs_strip",
                        config={"displaylogo": False})
        _slice_view(ctx, pr)
        d1, d2 = st.columns(2)
        d1.download_button("PDF report", lambda: _pdf(ctx, pr), f"{key[:12]}_series_report.pdf", "application/pdf",
                           on_click="ignore", icon=":material/picture_as_pdf:", width="stretch", key="pacs_pdf")
        record = dict(series_record(pr.retrieved.series, r, ctx.model_info), study_uid=pr.retrieved.study_uid,
                      study_key=key)
        d2.download_button("Series result JSON", record_json(record), f"{key[:12]}_series.json", "application/json",
                           on_click="ignore", icon=":material/data_object:", width="stretch", key="pacs_json")
        with st.expander("Per-slice table", icon=":material/table:"):
            st.dataframe(slice_table(r), hide_index=True, width="stretch", key="pacs_slice_table")
    _send(ctx, pacs, user, pr)


def _send(ctx, pacs: PacsConfig, user: str, pr: PacsReview) -> None:
    from core.report.sr import ModelIdentity

    with st.container(border=True, key="pacs_send_box"):
        st.markdown("**Send the results to the PACS**, into the same study: a structured report (DICOM SR, marked "
                    "unverified, research use only) and the key slices' heatmaps (Secondary Capture).")
        with_pdf = st.checkbox("Also store the PDF report (Encapsulated PDF)", key="pacs_send_pdf")
        clicked = st.button("Send results to PACS", icon=":material/cloud_upload:", type="primary",
                            key="pacs_send", disabled=bool(pr.review.series_ood))
        if clicked:
            try:
                outputs = wf.build_outputs(pr.retrieved, pr.review, ModelIdentity.from_card(ctx.predictor.bundle.card),
                                           pr.key_overlays, pdf=_pdf(ctx, pr) if with_pdf else None)
                with st.spinner("Storing the results in the PACS…"):
                    stored = wf.send(pacs, outputs)
            except (PacsError, wf.ReviewError) as exc:
                st.error(f"**The results were not sent.** {exc}", icon=":material/cloud_off:")
                return
            except Exception as exc:  # noqa: BLE001
                st.error(f"**The results were not sent** ({type(exc).__name__}: {exc}).", icon=":material/error:")
                return
            accepted = set(stored)
            pr.sent = [row for row in outputs.rows if row["SOP Instance UID"] in accepted]
            _mark(pr.retrieved.study_uid, "sent")
            _audit(ctx, user, "send", study_uid=pr.retrieved.study_uid, series_uid=pr.retrieved.series_uid,
                   study_key=pr.retrieved.key, sop_uids=list(stored),
                   detail={"objects": [row["object"] for row in pr.sent], "pdf": bool(with_pdf)})
            st.rerun()  # the status column above now says "sent"
        if pr.sent:
            st.success(f"Stored {len(pr.sent)} object{'s' if len(pr.sent) != 1 else ''} in the study "
                       f"`{pr.retrieved.study_uid}`.", icon=":material/cloud_done:")
            st.table(pd.DataFrame(pr.sent).set_index("object"))  # a few rows: a plain table, readable and copyable


# -- the page -------------------------------------------------------------------------------------------------

def render() -> None:
    """Draw the PACS page."""
    ctx = state.current()
    st.title("PACS")
    st.caption("Search the hospital's PACS, review a series, and send the result back into the study.")
    st.warning(f"**{state.RESEARCH_NOTICE}** Results sent to the PACS are marked unverified research output.",
               icon=":material/science:")
    user = auth.require_user(ctx.config.auth_config)
    if st.session_state.get("pacs_user") != user:  # signed out, or another user: forget what the last one saw
        for name in (HITS, SERIES, REVIEW, STATUS, "pacs_study", "pacs_series"):
            st.session_state.pop(name, None)
        st.session_state["pacs_user"] = user
    if user is None:
        st.stop()
    try:
        pacs = PacsConfig.from_app_config(ctx.config)
    except PacsError as exc:
        st.error(f"**The PACS settings are invalid:** {exc}", icon=":material/settings_alert:")
        st.stop()
    if pacs is None:
        st.info("**No PACS is configured.** Set `MRI_PACS_URL` (and `MRI_PACS_USER` / `MRI_PACS_PASSWORD` or "
                "`MRI_PACS_TOKEN`), or `pacs_url` in `mri_app.toml`; see the README.", icon=":material/dns:")
        st.stop()
    st.caption(f":material/dns: {pacs.endpoint} · {pacs.auth_kind} authentication")
    if AUDIT_WARNING in st.session_state:
        st.warning(st.session_state.pop(AUDIT_WARNING), icon=":material/history:")
    _search(ctx, pacs, user)
    study = _results(ctx, st.session_state.get(HITS) or []) if HITS in st.session_state else None
    if study is None:
        return
    series = _series(ctx, pacs, study)
    if not series:
        return
    st.dataframe(pd.DataFrame([{"series": s.series_number, "modality": s.modality, "description": s.description,
                                "images": s.n_instances} for s in series]), hide_index=True, width="stretch",
                 key="pacs_series_table")
    images = [s for s in series if s.modality in IMAGE_MODALITIES]
    if not images:
        st.info("This study has no MR series to review.", icon=":material/image_not_supported:")
        return
    def label(i: int) -> str:
        s = images[i]
        number = s.series_number if s.series_number is not None else "?"
        return f"Series {number} · {s.modality} · {s.description or 'no description'} · {s.n_instances or '?'} images"

    pick = st.selectbox("Series to review", range(len(images)), key="pacs_series", format_func=label)
    hit = images[min(pick or 0, len(images) - 1)]
    if st.button("Retrieve and review", icon=":material/download:", key="pacs_review_button"):
        _retrieve_and_review(ctx, pacs, user, study.study_uid, hit)
    pr = st.session_state.get(REVIEW)
    if isinstance(pr, PacsReview) and pr.retrieved.study_uid == study.study_uid:
        _study_view(ctx, pacs, user, pr)
