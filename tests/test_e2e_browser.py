"""Real-browser end-to-end test: ``streamlit run`` on localhost, driven by headless Chromium (Playwright).

Uses the Debian chromium (``/usr/bin/chromium``, override with ``CHROMIUM_PATH``) through
Playwright's ``executable_path``, so no browser download is needed. Screenshots go to
``artifacts/screenshots/`` (git-ignored; override with ``E2E_ARTIFACTS``).

    .venv/bin/pytest -m e2e tests/test_e2e_browser.py
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
from PIL import Image

from app_support import APP, CLASSES, CORRUPT_NAME, REPO, make_app_env, make_labelled_folder, scan_png, \
    set_env_for_subprocess

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
SHOTS = Path(os.environ.get("E2E_ARTIFACTS", REPO / "artifacts")) / "screenshots"
WAIT_MS = 120_000  # two busy CPU cores on CI: be patient, but finite
PER_CLASS = 3
MANY = 800


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_files(tiny_bundle_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    env = make_app_env(tmp, tiny_bundle_dir)
    make_labelled_folder(env.root / "batch", per_class=PER_CLASS)  # + one corrupted JPEG
    many = env.root / "many"  # big enough that Stop arrives long before the end; labelled, for re-evaluation
    for c in CLASSES:
        (many / c).mkdir(parents=True)
    rng = np.random.default_rng(11)
    from core.data.synthetic import fake_scan

    for i in range(MANY):
        Image.fromarray(fake_scan(rng, 320, i % 4)).save(many / CLASSES[i % 4] / f"s{i:04d}.png", compress_level=1)
    upload = tmp / "upload.png"
    upload.write_bytes(scan_png(seed=5, label=2, size=256))
    return env, upload


@pytest.fixture(scope="module")
def server(app_files, tmp_path_factory):
    env, _ = app_files
    yield from serve(env, tmp_path_factory)


def serve(env, tmp_path_factory):
    """``streamlit run`` the app on a free localhost port with ``env``'s settings; yields its URL until closed."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("e2e-log") / "streamlit.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port), "--server.address",
         "localhost", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=set_env_for_subprocess(env), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not become healthy:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if SHOTS.is_dir():  # keep the server log next to the screenshots
            shutil.copy(log_path, SHOTS / "streamlit.log")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 2200})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    yield pg
    context.close()


def shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"))


def open_page(pg, url: str, heading: str) -> None:
    """Open a page and wait until its script run has finished drawing it."""
    pg.goto(url, wait_until="domcontentloaded")
    pg.get_by_role("heading", name=heading, level=1).wait_for()
    pg.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    # Streamlit may show "Page not found" for a deep link on the first session of a fresh server.
    if pg.locator('[data-testid="stDialog"]').count():
        pg.keyboard.press("Escape")
    assert pg.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in pg.inner_text("body")


def start_on_folder(pg, box_label: str, folder: str, button: str) -> None:
    """Type a folder into a page's path box, let the page settle, then press its start button."""
    box = pg.get_by_role("textbox", name=box_label)
    box.fill(folder)
    box.press("Enter")
    pg.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    pg.get_by_role("button", name=button).click()


def image_rgb(pg, img) -> np.ndarray:
    data = pg.request.get(urljoin(pg.url, img.get_attribute("src"))).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_every_page_renders(page, server, tiny_bundle_dir):
    from core.model.checkpoint import load_bundle

    bundle = load_bundle(tiny_bundle_dir)
    open_page(page, server + "/", "Single scan")
    side = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "Research use only" in side and "not for diagnosis" in side
    assert bundle.name in side and f"Version {bundle.version}" in side and "device cpu" in side
    assert bundle.sha256[:12] in side
    for link in ("Single scan", "Batch review", "Model metrics"):
        assert link in side
    # The end of the page's script: on a fresh server's first session the script state can read "notRunning"
    # before the run has drawn the page, so wait for its last element before counting widgets.
    page.get_by_text("Waiting for a scan").wait_for()
    # The uploader's <input> can be attached a moment after the text below it (CI saw a count of 0 once).
    page.locator('input[type="file"]').first.wait_for(state="attached")
    assert page.locator('input[type="file"]').count() == 1
    shot(page, "e2e_1_single_scan_empty")

    open_page(page, server + "/batch-review", "Batch review")
    page.get_by_role("textbox", name="Folder to review").wait_for()
    page.get_by_role("button", name="Start review").wait_for()
    page.get_by_text("Choose a folder or upload files").wait_for()  # the end of the page's script
    assert "Browsing is limited to" in page.inner_text("body")
    shot(page, "e2e_2_batch_empty")

    open_page(page, server + "/model-metrics", "Model metrics")
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 1")  # sensitivity by source
    body = page.inner_text("body")
    assert "Held-out parts, one per source of scans" in body and "By MRI sequence" in body
    assert page.locator('[data-testid="stDataFrame"]').count() >= 2  # overview + per-sequence table
    page.get_by_role("tab", name="Set details").click()
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3")
    body = page.inner_text("body")
    for text in ("tumour slices · 95% CI", "Confusion matrix", "Per-class precision / recall / F1"):
        assert text in body, text
    time.sleep(1.0)  # let plotly finish drawing before the screenshot
    shot(page, "e2e_3_metrics")
    # reports/shift_eval.json is for the shipped weights, not this test model: the tab says so, draws no table.
    page.get_by_role("tab", name="Stress test").click()
    page.get_by_text("No stress-test report for this model").wait_for()


def test_upload_gives_prediction_and_heatmap(page, server, app_files):
    _, upload = app_files
    open_page(page, server + "/", "Single scan")
    page.locator('input[type="file"]').set_input_files(str(upload))
    metric = page.locator('[data-testid="stMetric"]', has_text="Predicted class")
    metric.wait_for()
    value = metric.locator('[data-testid="stMetricValue"]').inner_text()
    assert value.split(" ")[0] in CLASSES, value
    assert page.locator('[data-testid="stMetric"]', has_text="Calibrated confidence").inner_text().strip().endswith("%")
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    # The original and the overlay are one plotly figure (two <image> panels with linked axes).
    pair = page.locator(".st-key-image_pair .js-plotly-plot")
    pair.wait_for()
    page.wait_for_function("document.querySelectorAll('.st-key-image_pair image').length >= 2")
    sources = [page.locator(".st-key-image_pair image").nth(i).get_attribute("href") for i in range(2)]
    original, heat = (np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
                      .astype(int) for src in sources)
    assert original.shape == heat.shape and original.shape[:2] == (256, 256)
    chroma = lambda a: float(np.abs(a[..., 0] - a[..., 2]).mean())  # noqa: E731
    assert chroma(original) < 3 < chroma(heat), (chroma(original), chroma(heat))  # grey scan vs coloured heatmap
    body = page.inner_text("body")
    assert "heatmap peak at x=" in body and "px of the 256×256 original" in body
    assert page.locator(".st-key-image_pair .colorbar").count() == 1  # the heatmap's colour bar
    # Zoom on the original: the heatmap panel follows (linked axes), as a reader expects.
    ranges = "(() => { const l = document.querySelector('.st-key-image_pair .js-plotly-plot')._fullLayout; " \
             "return [l.xaxis.range, l.xaxis2.range, l.yaxis.range, l.yaxis2.range]; })()"
    before = page.evaluate(ranges)
    box = page.locator(".st-key-image_pair .xy .nsewdrag").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)
    page.wait_for_function(f"JSON.stringify({ranges}[0]) !== '{json.dumps(before[0], separators=(',', ':'))}'")
    x1, x2, y1, y2 = page.evaluate(ranges)
    assert x1[1] - x1[0] < before[0][1] - before[0][0]  # zoomed in
    assert np.allclose(x1, x2) and np.allclose(y1, y2)  # and the other panel shows the same region
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")  # + probability chart
    predicted = value.split(" ")[0]
    with page.expect_download() as dl:
        page.get_by_role("button", name="Overlay PNG").click()
    from core.explain.cam import CAM_METHODS
    from ui.results import overlay_file_name

    assert dl.value.suggested_filename in {overlay_file_name("upload", predicted, m) for m in CAM_METHODS}
    labelled = np.asarray(Image.open(dl.value.path()).convert("RGB"))
    assert labelled.shape[0] > 256 + 100 and labelled.shape[1] >= 640  # the overlay plus its burned-in footer
    time.sleep(1.0)
    shot(page, "e2e_4_single_scan_result")


def test_batch_on_small_folder_fills_table(page, server):
    open_page(page, server + "/batch-review", "Batch review")
    start_on_folder(page, "Folder to review", "batch", "Start review")
    n = PER_CLASS * len(CLASSES) + 1
    page.get_by_text(f"Reviewed {n} files").wait_for()
    grid = page.locator('.st-key-batch_table [role="grid"]')  # the data grid's accessible (hidden) table
    grid.wait_for(state="attached")
    assert grid.get_attribute("aria-rowcount") == str(n + 1)  # header + one row per file
    cells = page.locator('.st-key-batch_table [role="gridcell"]').all_text_contents()
    assert f"glioma/{CORRUPT_NAME}" in cells and "pituitary/pituitary_2.png" in cells
    assert sum(c in CLASSES for c in cells) >= n - 1  # predicted (and true) class cells are filled
    assert "1 unreadable" in page.inner_text("body")
    with page.expect_download() as dl:
        page.get_by_role("button", name="CSV (all rows)").click()
    lines = Path(dl.value.path()).read_text().strip().splitlines()
    assert lines[0].startswith("path,predicted,confidence,p_glioma") and len(lines) == n + 1
    page.wait_for_function("document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 12")
    time.sleep(1.5)
    shot(page, "e2e_5_batch_results")


def test_arrow_keys_step_through_the_batch_from_single_scan(page, server):
    """Keyboard navigation: after a batch review, ← → on the single-scan page open the previous / next file."""
    open_page(page, server + "/batch-review", "Batch review")
    start_on_folder(page, "Folder to review", "batch", "Start review")
    page.get_by_text(f"Reviewed {PER_CLASS * len(CLASSES) + 1} files").wait_for()
    page.locator('[data-testid="stSidebarNav"] a', has_text="Single scan").click()
    page.get_by_role("heading", name="Single scan", level=1).wait_for()
    page.get_by_text("From the last batch review", exact=True).click()
    page.get_by_text("Previous / next file of the batch table").wait_for()
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    chosen = page.locator(".st-key-single_batch_file input")
    first = chosen.input_value()
    page.get_by_role("heading", name="Single scan", level=1).click()  # focus the page, not a widget
    page.keyboard.press("ArrowRight")
    page.wait_for_function("v => document.querySelector('.st-key-single_batch_file input').value !== v", arg=first)
    second = chosen.input_value()
    assert second != first
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    page.get_by_role("heading", name="Single scan", level=1).click()
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("v => document.querySelector('.st-key-single_batch_file input').value === v", arg=first)
    assert page.locator('[data-testid="stException"]').count() == 0


def test_batch_can_be_stopped_and_keeps_finished_rows(page, server):
    open_page(page, server + "/batch-review", "Batch review")
    start_on_folder(page, "Folder to review", "many", "Start review")
    progress = page.locator('[data-testid="stProgress"]')
    page.wait_for_function(  # a running count and an ETA are shown while it works
        "Array.from(document.querySelectorAll('[data-testid=\"stProgress\"]'))"
        ".some(e => /[1-9][0-9]* \\/ 800 files .* ETA [0-9]+:[0-9]{2}/.test(e.innerText))")
    assert "files/s" in progress.inner_text()
    shot(page, "e2e_6_batch_running")
    page.get_by_role("button", name="Stop").click()
    stopped = page.get_by_text("Stopped after")
    stopped.wait_for()
    done = int(stopped.inner_text().split("Stopped after")[1].split("of")[0].strip().replace(",", ""))
    assert 0 < done < MANY
    grid = page.locator('.st-key-batch_table [role="grid"]')
    grid.wait_for(state="attached")
    page.wait_for_function(f"document.querySelector('.st-key-batch_table [role=\"grid\"]')"
                           f".getAttribute('aria-rowcount') === '{done + 1}'")
    page.get_by_role("button", name="Start review").wait_for()
    assert page.get_by_role("button", name="Start review").is_enabled()
    shot(page, "e2e_7_batch_stopped")


def test_reevaluation_can_be_stopped(page, server):
    open_page(page, server + "/model-metrics", "Model metrics")
    page.get_by_role("tab", name="Re-evaluate").click()
    start_on_folder(page, "Labelled folder", "many", "Evaluate")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('[data-testid=\"stProgress\"]'))"
        ".some(e => /[1-9][0-9,]* \\/ 800 images/.test(e.innerText))")
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("stopped. No metrics are shown").wait_for()
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    body = page.inner_text("body")
    assert "Evaluated" not in body and "Traceback" not in body
    assert page.get_by_role("button", name="Evaluate").is_enabled()
    shot(page, "e2e_8_reevaluation_stopped")

