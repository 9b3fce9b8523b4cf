"""Model metrics: the evaluation written by train.py, per source and sequence, the targets, the data audit, the
model card, re-evaluation and the audit trail."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import streamlit as st

from app_config import REPO
from core.model.checkpoint import AUDIT_FILE, METRICS_FILE
from core.evaluation.evaluate import metrics_for_run, run_labelled
from core.io.files import PathNotAllowedError, resolve_within
from core.evaluation.targets import evaluate_targets
from ui import charts, feedback, state, views
from ui.charts import format_confidence

TABS = ["By source", "Set details", "Targets", "Stress test", "Data audit", "Misclassified", "Model card",
        "Re-evaluate", "Audit trail"]
SHIFT_REPORT_NAME = "shift_eval.json"  # written by `python -m tools.shift_eval`
SEQUENCE_SHIFT_REPORT_NAME = "shift_eval_feltrin.json"  # `python -m tools.shift_eval --source feltrin`

ctx = state.current()
card = ctx.predictor.bundle.card
names = ctx.class_names
weights = Path(ctx.weights_dir)
metrics_path, audit_path = weights / METRICS_FILE, weights / AUDIT_FILE
metrics = views.read_json(metrics_path)
data_audit = views.read_json(audit_path)

st.title("Model metrics")
st.caption(f"`{ctx.predictor.bundle.name}` version {ctx.predictor.bundle.version} · evaluation written by "
           f"`train.py` to `{metrics_path}`")
if metrics is None:
    st.warning(f"No readable `{METRICS_FILE}` next to the weights in `{weights}`. Train with `python train.py` "
               "to produce it; the *Re-evaluate* and *Audit trail* tabs still work.", icon=":material/warning:")
    metrics = {}
sets = metrics.get("sets", {})
held, validation = views.held_out_sets(metrics), views.validation_sets(metrics)
left_out = metrics.get("left_out_sources") or []
if held:
    st.markdown("**Held-out parts, one per source of scans.** No slice, near copy or patient of these parts was "
                "trained on or used to choose the model" + (f" (sources never trained on: {', '.join(left_out)})"
                                                            if left_out else "") + ".")
    st.dataframe(views.sources_frame(held), hide_index=True, width="stretch", key="overview",
                 column_config=views.SOURCES_COLUMNS)


def shift_report(name: str = SHIFT_REPORT_NAME) -> dict | None:
    """A stress-test report for this model: beside its weights (a user's own model) or the repository's."""
    for path in (weights / name, REPO / "reports" / name):
        report = views.read_json(path)
        if report is not None and report.get("model") == ctx.predictor.bundle.identity:
            return report
    return None


def data_label(text: str | None) -> str:
    """A report's data folder without another machine's absolute path: each absolute path in ``text`` is cut
    to its last two parts (``/work/shared/data/brain-tumor-mri/Testing`` -> ``brain-tumor-mri/Testing``)."""
    def short(match: re.Match) -> str:
        parts = [p for p in re.split(r"[\\/]+", match.group(0)) if p]
        return "/".join(parts[-2:])

    # An absolute path starts the text or follows a space or "(" (relative ones are left as they are).
    return re.sub(r"(?<![^\s(])(?:[A-Za-z]:)?[\\/][^\s()]*", short, str(text or "?"))


tabs = dict(zip(TABS, st.tabs(TABS, key="metrics_tab", on_change="rerun")))


def tab_open(name: str) -> bool:
    return tabs[name].open is not False  # None (state not tracked) renders everything


if tab_open("By source"):
    with tabs["By source"]:
        if not held:
            st.info("The metrics file has no held-out sets.")
        elif any(m.get("detection") for m in held.values()):
            st.markdown("**Tumour sensitivity and specificity by source** (bars: 95 % intervals; small parts have wide "
                        "ones)")
            st.plotly_chart(charts.detection_by_source_fig(held), key="by_source_fig",
                            config={"displayModeBar": False})
        seq = views.sequence_frame(held)
        if len(seq):
            st.markdown("**By MRI sequence** (where the source records it): a model that reads the sequence instead "
                        "of the lesion shows here first.")
            st.dataframe(seq, hide_index=True, width="stretch", key="by_sequence",
                         column_config=views.SEQUENCE_COLUMNS)
        for key, m in held.items():
            missed = views.missed_findings(m, metrics.get("class_names", names), ctx.uncertain_below)
            if missed and missed["missed_confident"]:
                st.warning(f"{m.get('title', key)}: " + views.missed_findings_text(missed, ctx.uncertain_below),
                           icon=":material/visibility_off:")
        if validation:
            st.markdown("**Validation parts** (the model was selected on these; the held-out figures above are the "
                        "honest ones)")
            st.dataframe(views.sources_frame(validation), hide_index=True, width="stretch", key="validation_overview",
                         column_config=views.SOURCES_COLUMNS)

if tab_open("Set details"):
    with tabs["Set details"]:
        choices = list(held) + [k for k in validation if k not in held]
        if not choices:
            st.info("No evaluation sets in the metrics file.")
        else:
            titles = {**{k: m.get("title", k) for k, m in sets.items()}, **{k: m["title"] for k, m in held.items()}}
            key = st.selectbox("Set", choices, format_func=lambda k: titles.get(k, k), key="set_pick")
            m = sets[key]
            views.detection_view(m, key)
            views.metrics_set_view(m, metrics.get("class_names", names), key=key, description=m.get("definition"),
                                   confident_at=ctx.uncertain_below)

if tab_open("Targets"):
    with tabs["Targets"]:
        st.markdown("The targets the multi-source model was built against, with the figure measured on the held-out "
                    "parts (never on validation). **NO** marks a target that is missed.")
        views.targets_view(evaluate_targets(metrics, {"card": card, "shift_eval": shift_report()}))

if tab_open("Stress test"):
    with tabs["Stress test"]:
        report = shift_report()
        if report is None:
            st.info("No stress-test report for this model. Run `python -m tools.shift_eval` (add `--weights` and "
                    f"`--out {weights / SHIFT_REPORT_NAME}` for a model of your own).", icon=":material/science:")
        else:
            shifts = report.get("shifts", {})
            ref = shifts.get("none", {}).get("accuracy")
            st.markdown("How accuracy moves when **every** image of a labelled folder is changed in one way that scans "
                        f"from other sites differ by (folder `{data_label(report.get('data'))}`). A large drop means: "
                        "check a local sample before relying on the figures above. Models are selected on the "
                        "validation split, never on this table.")
            st.dataframe(pd.DataFrame([{"change": r.get("description", k), "images": r.get("n"),
                                        "accuracy": r.get("accuracy"),
                                        # text: the reference row says so instead of an empty "None"
                                        "Δ accuracy": "reference" if k == "none" else (
                                            "–" if ref is None or r.get("accuracy") is None
                                            else f"{r['accuracy'] - ref:+.3f}"),
                                        "macro-F1": r.get("macro_f1"),
                                        "tumour sensitivity": r.get("tumour_sensitivity"),
                                        "flagged": r.get("ood_flagged_rate")}
                                       for k, r in shifts.items()]),
                         hide_index=True, width="stretch", key="shift_eval", column_config={
                             "accuracy": st.column_config.NumberColumn(format="percent"),
                             "Δ accuracy": st.column_config.TextColumn(
                                 help="Accuracy minus that of the images as stored (the reference row)."),
                             "macro-F1": st.column_config.NumberColumn(format="%.3f"),
                             "tumour sensitivity": st.column_config.NumberColumn(format="%.3f"),
                             "flagged": st.column_config.NumberColumn("flagged outside intended use",
                                                                      format="percent")})
        by_seq = shift_report(SEQUENCE_SHIFT_REPORT_NAME)
        if by_seq is not None:
            st.markdown(f"**By sequence** on `{data_label(by_seq.get('data'))}`: tumour sensitivity per MRI sequence "
                        "under each change.")
            rows = [{"change": r.get("description", k), "sequence": q, "images": f.get("n"),
                     "tumour sensitivity": f.get("tumour_sensitivity"), "specificity": f.get("specificity")}
                    for k, r in by_seq.get("shifts", {}).items() for q, f in (r.get("by_sequence") or {}).items()]
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="shift_eval_sequence",
                         column_config=views.SEQUENCE_COLUMNS)

if tab_open("Data audit"):
    with tabs["Data audit"]:
        views.audit_summary_view(metrics.get("audit_summary", {}), data_audit)
        non_mri = views.read_json(REPO / "reports" / "kaggle_ct_audit.json")
        if non_mri:
            views.non_mri_view(non_mri)
        ood = metrics.get("ood") or card.ood.evaluation
        if ood:
            st.markdown("**Out-of-distribution check** (synthetic non-MRI probes vs held-out MRI slices)")
            c = st.columns(3)
            auroc = ood.get("auroc_heldout_vs_non_mri", ood.get("auroc_testing_vs_non_mri", float("nan")))
            c[0].metric("AUROC held-out MRI vs non-MRI", f"{auroc:.3f}")
            c[1].metric("Non-MRI images flagged", f"{ood.get('non_mri_flagged_rate', float('nan')):.1%}")
            c[2].metric("Held-out MRI slices flagged",
                        f"{ood.get('heldout_flagged_rate', ood.get('testing_flagged_rate', float('nan'))):.1%}")
            per_kind = ood.get("non_mri_flagged_per_kind") or {}
            if per_kind:
                st.dataframe(pd.DataFrame({"probe": list(per_kind), "flagged": list(per_kind.values())}),
                             hide_index=True, key="ood_kinds",
                             column_config={"flagged": st.column_config.ProgressColumn(format="percent")})

if tab_open("Misclassified"):
    with tabs["Misclassified"]:
        with_files = {k: m for k, m in held.items() if m.get("misclassified")}
        if not with_files:
            st.success("No misclassified held-out images are listed in the metrics file.")
        else:
            which = st.selectbox("Set", list(with_files), format_func=lambda k: with_files[k].get("title", k),
                                 key="mis_set")
            wrong = sorted(with_files[which]["misclassified"], key=lambda r: -float(r.get("confidence", 0)))
            folder = views.set_folder(with_files[which], which, card, ctx.config.dataset_candidates(metrics, card))
            if folder is None:
                st.info("The images of this set are not available on this machine (volume slices have no file, "
                        "and image folders were looked for under the configured `dataset_root`, the data root in "
                        "the metrics/card and `../shared/data`), so only the list is shown.",
                        icon=":material/image_not_supported:")
                st.dataframe(pd.DataFrame(wrong), hide_index=True, width="stretch", key="mis_list")
            else:
                st.caption(f"{len(wrong):,} misclassified images from `{folder}`, most confident mistakes first.")
                show_cam = st.toggle("Heatmaps for the predicted class", value=False, key="mis_cam")
                start, stop = views.pager(len(wrong), ctx.config.gallery_page_size, key="mis_page")
                shown = wrong[start:stop]
                paths = []
                for r in shown:
                    try:  # file names come from the metrics file: keep them inside the set's folder
                        paths.append(resolve_within(r["file"], [folder]))
                    except PathNotAllowedError:
                        paths.append(folder / "__outside__")
                with st.spinner("Rendering thumbnails…"):
                    images = views.thumbnails(ctx.explainer, paths, "gradcam" if show_cam else None)
                items = [{"title": r["file"], "caption": f"true **{r['true']}** → :red[**{r['predicted']}**] "
                                                          f"{format_confidence(float(r['confidence']))}",
                          "path": path, "openable": path.is_file()} for r, path in zip(shown, paths)]
                views.gallery(items, images, key="mis", open_label="Open in Single scan",
                              on_open=lambda item: state.open_in_single_scan(item["path"], item["title"]))

if tab_open("Model card"):
    with tabs["Model card"]:
        views.model_card_view(card)

if tab_open("Re-evaluate"):
    with tabs["Re-evaluate"]:
        st.markdown("Run the same evaluation as `train.py` on a labelled folder: one sub-folder per class "
                    f"({', '.join(f'`{n}`' for n in names)}).")
        st.selectbox("Pick a folder", views.folder_choices(tuple(map(str, ctx.config.allowed_roots))), index=None,
                     key="reeval_pick", placeholder="Browse the allowed folders or type a path below",
                     on_change=lambda: st.session_state.update(reeval_folder=st.session_state["reeval_pick"] or ""))
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        folder = c1.text_input("Labelled folder", key="reeval_folder", placeholder="e.g. data/brain-tumor-mri/Testing")
        go = c2.button("Evaluate", type="primary", icon=":material/play_arrow:", key="reeval_start", width="stretch")
        st.caption(f":material/lock: Limited to: {', '.join(f'`{r}`' for r in ctx.config.allowed_roots)}")
        if go:
            try:
                if not (folder or "").strip():
                    raise ValueError("enter a folder path first")
                root = resolve_within(folder.strip(), list(ctx.config.allowed_roots))
                if not root.is_dir():
                    raise ValueError(f"{folder} is not an existing folder")
                bar = st.progress(0.0, text="Preparing…")
                # A click reruns the page, which interrupts this run at its next progress update.
                stop_slot = st.empty()
                stop_slot.button("Stop", icon=":material/stop:", key="reeval_stop",
                                 on_click=lambda: st.session_state.update(reeval_stopped=str(root)))

                def progress(done: int, total: int) -> None:
                    if done == total or done % 8 == 0:
                        bar.progress(done / max(total, 1), text=f"{done:,} / {total:,} images")

                run = run_labelled(ctx.predictor, root, ctx.predictor.batch_size, progress=progress, audit=ctx.audit)
                bar.empty()
                stop_slot.empty()
                if not run.files:
                    raise ValueError(f"no readable images under the class folders of {root}")
                result = metrics_for_run(run, names, ctx.predictor.temperature)
                st.session_state["reeval"] = {"folder": str(root), "metrics": result}
            except PathNotAllowedError as exc:
                st.error(f"**Folder refused.** {exc}", icon=":material/block:")
            except ValueError as exc:
                st.error(f"**Cannot evaluate this folder:** {exc}", icon=":material/folder_off:")
        stopped = st.session_state.pop("reeval_stopped", None)
        if stopped and not go:
            st.info(f"Evaluation of `{stopped}` stopped. No metrics are shown for the part already done: the "
                    "folder is read class by class, so a partial run would be biased.", icon=":material/stop_circle:")
        res = st.session_state.get("reeval")
        if res:
            st.success(f"Evaluated `{res['folder']}`: {res['metrics'].get('n', 0):,} images.",
                       icon=":material/task_alt:")
            views.metrics_set_view(res["metrics"], names, key="reeval", confident_at=ctx.uncertain_below)
            bad = res["metrics"].get("unreadable") or []
            if bad:
                with st.expander(f"{len(bad)} unreadable file(s)"):
                    st.dataframe(pd.DataFrame(bad), hide_index=True, key="reeval_bad")

if tab_open("Audit trail"):
    with tabs["Audit trail"]:
        if ctx.audit is None:
            st.warning("The audit trail is not available (see the sidebar).")
        else:
            total = ctx.audit.count()
            st.markdown(f"Every prediction made in the dashboard (single scans and batch rows) is appended to "
                        f"`{ctx.config.audit_path}`: time, file SHA-256, model SHA-256, result and flags, and the "
                        f"readers' feedback on them. No images and no patient tags are stored. **{total:,}** records.")
            feedback.feedback_summary_view(ctx.audit)
            st.markdown("**Recent predictions** (newest first)")
            recent = pd.DataFrame(ctx.audit.recent(200))
            if len(recent):
                st.dataframe(recent, hide_index=True, width="stretch", key="audit_recent")
            st.download_button("Export audit trail (CSV)", ctx.audit.export_csv, "audit_trail.csv", "text/csv",
                               on_click="ignore", icon=":material/download:", key="audit_export",
                               help="Every prediction, with the newest reader feedback on each (feedback_verdict, "
                                    "feedback_class, feedback_note, feedback_time).")
