"""Process-wide resources (model, audit trail) and the sidebar shared by every page.

``bootstrap()`` runs in the entry script (``streamlit_app.py``) on every rerun,
before the page: widgets created there keep their state across pages.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app_config import REPO, AppConfig, ConfigError, load_config
from core.review.audit_trail import AuditTrail
from core.model.checkpoint import CARD_FILE, load_bundle
from core.model.device import select_device
from core.errors import CheckpointError
from core.inference.predictor import Predictor
from core.explain.cam import Explainer
from core.model.registry import list_models

RESEARCH_NOTICE = "Research use only — not for diagnosis."
RESEARCH_DETAIL = ("This tool classifies single 2-D brain MRI slices for research and review. It is not a "
                   "medical device and its output must not be used for clinical decisions.")
_CTX_KEY = "_app_ctx"


@dataclass
class AppContext:
    config: AppConfig
    predictor: Predictor
    explainer: Explainer  # the predictor's heatmaps, one per loaded model per process (shares its lock)
    audit: AuditTrail | None
    uncertain_below: float
    upload_limit_mb: int
    audit_slot: object = None  # sidebar placeholder of the audit-trail line
    weights_dir: Path | None = None  # the picked model's bundle folder (config.weights_dir or one below it)

    def __post_init__(self) -> None:
        if self.weights_dir is None:
            self.weights_dir = Path(self.config.weights_dir)

    @property
    def class_names(self) -> list[str]:
        return list(self.predictor.class_names)

    @property
    def model_info(self) -> dict:
        b = self.predictor.bundle
        return {"model_name": b.name, "model_version": b.version, "model_sha256": b.sha256}


def _file_stamp(folder: Path) -> tuple:
    """Modification stamps of the model files: a new or changed model gets a new cache entry."""
    out = []
    for name in (CARD_FILE, "model.safetensors"):
        p = folder / name
        try:
            s = p.stat()
            out.append((name, s.st_mtime_ns, s.st_size))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


@st.cache_resource(show_spinner="Loading the model (once per server process)…", max_entries=4)
def load_predictor(weights_dir: str, device: str, precision: str, stamp: tuple) -> Predictor:
    """Load + verify the bundle and build the predictor. Exceptions are not cached by Streamlit,
    so a fixed weights folder is picked up on the next rerun."""
    del stamp  # only part of the cache key
    predictor = Predictor(load_bundle(weights_dir), select_device(device), precision=precision)
    # One dummy scan under the loading spinner, so the first radiologist's scan does not pay the one-time
    # kernel setup (CUDA kernels, cuDNN plans, oneDNN primitives). On a GPU that setup is most of the first
    # scan's time: compare the bench's "Single scan, cold" with "cold, after Predictor.warmup() at load".
    predictor.warmup()
    return predictor


@st.cache_resource(show_spinner="Loading the model (once per server process)…", max_entries=4)
def load_explainer(weights_dir: str, device: str, precision: str, stamp: tuple) -> Explainer:
    """The heatmap engine of :func:`load_predictor`'s predictor (same cache key): one per loaded model per
    process, so every session's heatmaps share its lock (and, for the library engine, its model copy)."""
    explainer = Explainer(load_predictor(weights_dir, device, precision, stamp))
    explainer.warmup()  # one dummy heatmap at load, as for the predictor: the first real one is not cold
    return explainer


@st.cache_resource(show_spinner=False, max_entries=4)
def get_audit(path: str) -> AuditTrail:
    audit = AuditTrail(path)
    folder = Path(path).parent.resolve()
    if REPO in folder.parents:  # a data folder inside the repository: keep runtime data out of git
        marker = folder / ".gitignore"
        if not marker.exists():
            try:
                marker.write_text("# written by the dashboard: app data (audit trail) is never committed\n*\n")
            except OSError:
                pass
    return audit


def upload_limit_mb() -> int:
    try:
        return int(st.get_option("server.maxUploadSize"))
    except Exception:  # noqa: BLE001 - option missing in odd test contexts
        return 200


def research_banner() -> None:
    st.caption(f":orange-badge[:material/science: {RESEARCH_NOTICE}]  Model output is for research review; "
               "a radiologist makes every clinical call.")


def _sidebar_model(predictor: Predictor) -> None:
    b = predictor.bundle
    with st.sidebar.container(border=True):
        st.markdown(f"**Model** · `{b.name}`")
        precision = getattr(predictor, "precision", None)
        st.markdown(f"Version **{b.version}** · device **{predictor.device.type}**"
                    + (f" · {precision}" if precision else "")
                    + (" · mirror-averaged" if getattr(predictor, "tta", "none") == "hflip" else ""),
                    help="Mirror-averaged: each slice's probabilities are the mean of the slice and its "
                         "left-right mirror (test-time augmentation, as the model was calibrated and evaluated).")
        st.markdown(f"SHA-256 `{b.sha256[:12]}`", help=f"Full SHA-256 of the weights file: {b.sha256}")


MODEL_KEY = "model_pick"  # the sidebar's model picker (a bundle folder)


def pick_model(root: Path) -> Path:
    """The sidebar's model picker over the bundles of ``root`` (``core.model.registry``): the default bundle first,
    then ``root/<model-name>/`` ones. Hidden when there is only one. Returns the picked bundle folder; every
    page follows it (each model is loaded once per server process and cached)."""
    models = list_models(root)
    if len(models) <= 1:
        return root
    by_path = {str(e.path): e for e in models}
    if st.session_state.get(MODEL_KEY) not in by_path:
        st.session_state[MODEL_KEY] = str(models[0].path)
    picked = st.sidebar.selectbox(
        "Model", list(by_path), key=MODEL_KEY, format_func=lambda p: by_path[p].label,
        help="\n\n".join(f"**{e.name}** {e.version} ({'default; ' if e.default else ''}{len(e.class_names)} "
                          f"classes, SHA-256 {e.short_sha}): {', '.join(e.class_names[:6])}"
                          f"{', …' if len(e.class_names) > 6 else ''}" for e in models))
    entry = by_path[picked]
    st.sidebar.caption(f"{len(entry.class_names)} classes. {entry.intended_use.split('. ')[0]}.")
    return Path(picked)


def bootstrap() -> AppContext:
    """Load config + model and draw the sidebar. On failure: a clear ``st.error`` and ``st.stop()``."""
    st.sidebar.markdown("### :material/neurology: MRI slice review")
    st.sidebar.warning(f"**{RESEARCH_NOTICE}** {RESEARCH_DETAIL}", icon=":material/science:")
    research_banner()
    try:
        config = load_config()
    except ConfigError as exc:
        st.error(f"The app configuration is invalid: {exc}", icon=":material/settings_alert:")
        st.stop()
    weights = pick_model(Path(config.weights_dir))
    try:
        explainer = load_explainer(str(weights), config.device, config.precision, _file_stamp(weights))
        predictor = explainer.predictor  # load_predictor's, cached under the same key
    except CheckpointError as exc:
        st.sidebar.error("No model loaded.", icon=":material/error:")
        st.error(f"**The model could not be loaded, so no predictions can be made.**\n\n{exc}\n\n"
                 f"Model folder: `{weights}` (set `MRI_WEIGHTS_DIR` or `weights_dir` in the app config). "
                 "Restore the original weights or retrain with `python train.py`.", icon=":material/gpp_bad:")
        st.stop()
    except ValueError as exc:  # device or precision not available here
        st.error(f"**The compute device or precision could not be used:** {exc}", icon=":material/memory:")
        st.stop()
    except Exception as exc:  # noqa: BLE001 - never a traceback in the page
        st.error(f"**The model could not be loaded:** {type(exc).__name__}: {exc}", icon=":material/error:")
        st.stop()
    _sidebar_model(predictor)
    threshold = st.sidebar.slider(
        "Uncertain below confidence", 0.0, 1.0, float(config.uncertain_below), 0.01, key="uncertain_below",
        help="Predictions whose calibrated confidence is under this value are marked 'uncertain' "
             "and should be reviewed by hand. Applies to single scans and to new batch runs.")
    audit = None
    slot = st.sidebar.empty()
    try:
        audit = get_audit(str(config.audit_path))
    except Exception as exc:  # noqa: BLE001 - an unwritable data folder must not take the app down
        slot.error(f"Audit trail unavailable ({exc}); predictions are not being logged.")
    ctx = AppContext(config, predictor, explainer, audit, float(threshold), upload_limit_mb(), slot, weights)
    show_audit_count(ctx)
    with st.sidebar:
        batch_progress_line()
    st.session_state[_CTX_KEY] = ctx
    return ctx


def show_audit_count(ctx: AppContext) -> None:
    """(Re)draw the sidebar's audit-trail line; pages call it again after logging predictions."""
    if ctx.audit is None or ctx.audit_slot is None:
        return
    try:
        n = ctx.audit.count()
    except Exception as exc:  # noqa: BLE001
        ctx.audit_slot.error(f"Audit trail unreadable ({exc}).")
        return
    ctx.audit_slot.caption(f":material/history: Audit trail: {n:,} prediction{'' if n == 1 else 's'} logged "
                           "(see *Model metrics* → Audit trail)")


BATCH_POLL_S = 2.0  # how often the sidebar line of a running batch review refreshes itself


def _batch_line() -> None:
    from ui.batch_job import CANCELLED, DONE, format_seconds

    job = st.session_state.get(BATCH_KEY)
    if job is None:
        return
    if job.running:
        icon, text = ":material/progress_activity:", (f"Batch review: {job.done:,} / {job.total:,} files · "
                                                      f"{format_seconds(job.elapsed_seconds)}")
    else:
        word = {DONE: "done", CANCELLED: "stopped"}.get(job.status, "failed")  # short: the sidebar is narrow
        icon, text = ":material/folder_open:", f"Batch {word}: {job.done:,} / {job.total:,} files"
    try:
        st.page_link(BATCH_PAGE, label=text, icon=icon, help=f"{job.label}: open the Batch review page")
    except st.errors.StreamlitAPIException:  # a page run on its own, outside the app's navigation
        st.caption(f"{icon} {text}")


@st.fragment(run_every=BATCH_POLL_S)
def _batch_line_live() -> None:
    _batch_line()


def batch_progress_line() -> None:
    """The sidebar's line for this session's batch review ("Batch review: 120 / 400 files · 1:05", then e.g.
    "Batch done: 400 / 400 files"), a link to the Batch review page. While the review runs in the background it refreshes itself every
    :data:`BATCH_POLL_S` seconds, on whichever page the user is; once finished it says how it ended."""
    job = st.session_state.get(BATCH_KEY)
    if job is None:
        return
    if job.running:
        _batch_line_live()
    else:
        _batch_line()


def current() -> AppContext:
    """The context set up by the entry script for this run (or set it up now)."""
    ctx = st.session_state.get(_CTX_KEY)
    return ctx if isinstance(ctx, AppContext) else bootstrap()


# Session keys shared between pages.
BATCH_KEY = "batch_job"  # ui.batch_job.BatchJob of the last batch review
SELECTED_KEY = "selected_file"  # {"path": str, "label": str} chosen on the batch page for the single-scan view
SINGLE_PAGE = "pages/1_Single_scan.py"
BATCH_PAGE = "pages/2_Batch_review.py"
METRICS_PAGE = "pages/3_Model_metrics.py"
STUDY_PAGE = "pages/4_Study_review.py"
PACS_PAGE = "pages/5_PACS.py"


def neighbour_in_batch(label: str, step: int = 1) -> tuple[Path, str] | None:
    """The batch row ``step`` rows after ``label`` (negative: before) in the batch table as last filtered on
    the Batch review page (all rows when it was never drawn, or ``label`` is not in that view), as
    ``(absolute path, row label)`` for :func:`open_in_single_scan`; None past either end or without a batch."""
    from ui.batch_job import neighbour

    job = st.session_state.get(BATCH_KEY)
    if job is None:
        return None
    paths = job.view_paths if job.view_paths and label in job.view_paths else \
        [r["path"] for r in job.rows_snapshot()]
    rel = neighbour(paths, label, step)
    return None if rel is None else (job.abs_path(rel), rel)


def open_in_single_scan(path: str | Path, label: str) -> None:
    """Show a batch file on the single-scan page."""
    st.session_state[SELECTED_KEY] = {"path": str(path), "label": label}
    st.session_state["single_source"] = "From the last batch review"
    st.session_state["single_batch_file"] = label
    st.switch_page(SINGLE_PAGE)
