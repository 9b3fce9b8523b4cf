"""Real browser: pick another shipped model in the sidebar, upload a scan, see its classes, open its metrics."""
from __future__ import annotations

import shutil
import time

import pytest

from app_support import make_app_env, scan_png, type_sequence_bundle
from test_e2e_browser import browser, open_page, page, serve, shot  # noqa: F401 - pytest fixtures

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def registry_server(tiny_bundle_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-models")
    weights = tmp / "weights"
    shutil.copytree(tiny_bundle_dir, weights)
    type_sequence_bundle(tiny_bundle_dir, weights / "typeseq")
    env = make_app_env(tmp, weights)
    upload = tmp / "scan.png"
    upload.write_bytes(scan_png(seed=3, label=1, size=224))
    for url in serve(env, tmp_path_factory):
        yield url, upload


def test_model_picker_switches_the_model_for_every_page(page, registry_server):  # noqa: F811
    url, upload = registry_server
    open_page(page, url + "/", "Single scan")
    side = page.locator('[data-testid="stSidebar"]')
    side.get_by_text("brain-mri-slice-classifier").first.wait_for()  # the default model is picked first
    page.locator(".st-key-model_pick").click()
    page.get_by_role("option", name="tiny-type-sequence", exact=False).click()
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    side.get_by_text("tiny-type-sequence").first.wait_for()
    page.locator('input[type="file"]').set_input_files(str(upload))
    page.get_by_text("Top 5 of 9 classes").wait_for()
    page.get_by_text("Implied type").wait_for()
    value = page.locator('[data-testid="stMetric"]', has_text="Predicted class").locator(
        '[data-testid="stMetricValue"]').inner_text()
    assert value.split(" (")[0].endswith(("T1", "T1C+", "T2")), value
    time.sleep(1.0)
    shot(page, "e2e_models_1_single_scan")
    page.locator('[data-testid="stSidebarNav"] a', has_text="Model metrics").click()
    page.get_by_role("heading", name="Model metrics", level=1).wait_for()
    page.get_by_role("tab", name="Set details").click()
    page.get_by_text("Merged views").wait_for()
    assert "Tumour type accuracy" in page.inner_text("body")
    assert page.locator('[data-testid="stException"]').count() == 0
    shot(page, "e2e_models_2_metrics")
