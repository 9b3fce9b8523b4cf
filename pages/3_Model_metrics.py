"""Model metrics: the evaluation written by train.py, the data audit, the model card, re-evaluation, audit trail."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app_config import REPO
from core.checkpoint import AUDIT_FILE, METRICS_FILE
from core.evaluate import metrics_for_run, run_labelled
from core.files import PathNotAllowedError, resolve_within
from ui import state, views

SETS = {"testing_full": "Testing — full split", "testing_leak_free": "Testing — leakage-free",
        "validation": "Validation"}
TABS = ["Testing — full", "Testing — leakage-free", "Validation", "Stress test", "Data audit", "Misclassified",
        "Model card", "Re-evaluate", "Audit trail"]
SHIFT_REPORT_NAME = "shift_eval.json"  # written by `python -m tools.shift_eval`

ctx = state.current()
card = ctx.predictor.bundle.card
names = ctx.class_names
weights = Path(ctx.config.weights_dir)
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
if sets:
    overview = []
    for key, label in SETS.items():
        m = sets.get(key)
        if not m:
            continue
        ci, fci = m.get("accuracy_ci95") or [None, None], m.get("macro_f1_ci95") or [None, None]
        overview.append({"set": label, "images": m.get("n"), "accuracy": m.get("accuracy"),
                         "accuracy 95% CI": f"{ci[0]:.1%} – {ci[1]:.1%}" if ci[0] is not None else "",
                         "macro-F1": m.get("macro_f1"),
                         "macro-F1 95% CI": f"{fci[0]:.3f} – {fci[1]:.3f}" if fci[0] is not None else "",
                         "ECE": m.get("ece"), "misclassified": len(m.get("misclassified", []))})
    st.dataframe(pd.DataFrame(overview), hide_index=True, width="stretch", key="overview", column_config={
        "accuracy": st.column_config.NumberColumn(format="percent"),
        "macro-F1": st.column_config.NumberColumn(format="%.3f"),
        "ECE": st.column_config.NumberColumn(format="%.3f")})

tabs = dict(zip(TABS, st.tabs(TABS, key="metrics_tab", on_change="rerun")))


def tab_open(name: str) -> bool:
    return tabs[name].open is not False  # None (state not tracked) renders everything


for tab_name, set_key in (("Testing — full", "testing_full"), ("Testing — leakage-free", "testing_leak_free"),
                          ("Validation", "validation")):
    if tab_open(tab_name):
        with tabs[tab_name]:
            m = sets.get(set_key)
            if not m:
                st.info("This set is not in the metrics file.")
            else:
                desc = m.get("definition") or ("All images of the Testing split." if set_key == "testing_full" else
                                               "Held-out part of Training used for early stopping and calibration.")
                views.metrics_set_view(m, metrics.get("class_names", names), key=set_key, description=desc,
                                       confident_at=ctx.uncertain_below)

if tab_open("Stress test"):
    with tabs["Stress test"]:
        # A report beside the weights (a user's own model folder) wins over the repository's one.
        report = next((r for p in (weights / SHIFT_REPORT_NAME, REPO / "reports" / SHIFT_REPORT_NAME)
                       if (r := views.read_json(p)) is not None), None)
        if report is None or report.get("model") != ctx.predictor.bundle.identity:
            st.info("No stress-test report for this model. Run `python -m tools.shift_eval` (add `--weights` and "
                    f"`--out {weights / SHIFT_REPORT_NAME}` for a model of your own).", icon=":material/science:")
        else:
            shifts = report.get("shifts", {})
            ref = shifts.get("none", {}).get("accuracy")
            st.markdown("How accuracy moves when **every** image of a labelled folder is changed in one way that scans "
                        f"from other sites differ by (folder `{report.get('data')}`). A large drop means: check a local "
                        "sample before relying on the figures above. Models are selected on the validation split, "
                        "never on this table.")
            st.dataframe(pd.DataFrame([{"change": r.get("description", k), "images": r.get("n"),
                                        "accuracy": r.get("accuracy"),
                                        "Δ accuracy": None if ref is None or k == "none" else r["accuracy"] - ref,
                                        "macro-F1": r.get("macro_f1"), "flagged": r.get("ood_flagged_rate")}
                                       for k, r in shifts.items()]),
                         hide_index=True, width="stretch", key="shift_eval", column_config={
                             "accuracy": st.column_config.NumberColumn(format="percent"),
                             "Δ accuracy": st.column_config.NumberColumn(format="%+.3f"),
                             "macro-F1": st.column_config.NumberColumn(format="%.3f"),
                             "flagged": st.column_config.NumberColumn("flagged outside intended use",
                                                                      format="percent")})

if tab_open("Data audit"):
    with tabs["Data audit"]:
        views.audit_summary_view(metrics.get("audit_summary", {}), data_audit)
        ood = metrics.get("ood") or card.get("ood", {}).get("evaluation")
        if ood:
            st.markdown("**Out-of-distribution check** (synthetic non-MRI probes vs Testing slices)")
            c = st.columns(3)
            c[0].metric("AUROC Testing vs non-MRI", f"{ood.get('auroc_testing_vs_non_mri', float('nan')):.3f}")
            c[1].metric("Non-MRI images flagged", f"{ood.get('non_mri_flagged_rate', float('nan')):.1%}")
            c[2].metric("Testing slices flagged", f"{ood.get('testing_flagged_rate', float('nan')):.1%}")
            per_kind = ood.get("non_mri_flagged_per_kind") or {}
            if per_kind:
                st.dataframe(pd.DataFrame({"probe": list(per_kind), "flagged": list(per_kind.values())}),
                             hide_index=True, key="ood_kinds",
                             column_config={"flagged": st.column_config.ProgressColumn(format="percent")})

if tab_open("Misclassified"):
    with tabs["Misclassified"]:
        listed = [r["file"] for k in ("testing_full", "testing_leak_free") for r in sets.get(k, {}).get("misclassified", [])]
        # The data counts as available where the Testing folder holds the files the metrics name.
        testing = next((c / "Testing" for c in ctx.config.dataset_candidates(metrics, card)
                        if (c / "Testing").is_dir() and any((c / "Testing" / f).is_file() for f in listed[:20])), None)
        if not listed:
            st.success("No misclassified Testing images are listed in the metrics file.")
        elif testing is None:
            st.info("The Testing images are not available on this machine (looked in the configured "
                    "`dataset_root`, the dataset path in the metrics/card and `../shared/data/brain-tumor-mri`), "
                    "so the misclassified gallery is hidden.", icon=":material/image_not_supported:")
        else:
            which = st.segmented_control("Set", ["testing_full", "testing_leak_free"], default="testing_full",
                                         required=True, format_func=lambda k: SETS[k], key="mis_set")
            wrong = sorted(sets.get(which, {}).get("misclassified", []), key=lambda r: -float(r.get("confidence", 0)))
            st.caption(f"{len(wrong):,} misclassified images from `{testing}`, most confident mistakes first.")
            if wrong:
                show_cam = st.toggle("Heatmaps for the predicted class", value=False, key="mis_cam")
                start, stop = views.pager(len(wrong), ctx.config.gallery_page_size, key="mis_page")
                shown = wrong[start:stop]
                paths = []
                for r in shown:
                    try:  # file names come from the metrics file: keep them inside the Testing folder
                        paths.append(resolve_within(r["file"], [testing]))
                    except PathNotAllowedError:
                        paths.append(testing / "__outside__")
                with st.spinner("Rendering thumbnails…"):
                    images = views.thumbnails(ctx.predictor, paths, "gradcam" if show_cam else None)
                items = [{"title": r["file"], "caption": f"true **{r['true']}** → :red[**{r['predicted']}**] "
                                                          f"{float(r['confidence']):.0%}"} for r in shown]
                views.gallery(items, images, key="mis")

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
                        f"`{ctx.config.audit_path}`: time, file SHA-256, model SHA-256, result and flags. "
                        f"No images and no patient tags are stored. **{total:,}** records.")
            recent = pd.DataFrame(ctx.audit.recent(200))
            if len(recent):
                st.dataframe(recent, hide_index=True, width="stretch", key="audit_recent")
            st.download_button("Export audit trail (CSV)", ctx.audit.export_csv, "audit_trail.csv", "text/csv",
                               on_click="ignore", icon=":material/download:", key="audit_export")
