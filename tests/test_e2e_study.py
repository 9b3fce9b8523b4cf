"""Real-browser test of the Study review page: upload a .nii.gz and a zipped DICOM series, see the verdicts, move
through the slices with the → key and the Next button, and see the image / heatmap pair.

    .venv/bin/pytest -m e2e tests/test_e2e_study.py
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from app_support import make_app_env
from test_e2e_browser import browser, open_page, page, serve, shot  # noqa: F401 - fixtures shared with that test
from tests.study_support import SECRETS, dicom_series, display_slices, nifti_bytes, synthetic_brain, zip_bytes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def study_files(tiny_bundle_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-study")
    env = make_app_env(tmp, tiny_bundle_dir)
    vol = synthetic_brain((64, 64, 12))
    nii = tmp / "head.nii.gz"
    nii.write_bytes(nifti_bytes(vol, np.diag([1.0, 1.0, 2.0, 1.0]), ("P", "S", "R")))
    zipped = tmp / "series.zip"
    zipped.write_bytes(zip_bytes(dicom_series(display_slices(vol), desc="AX FLAIR E2E")))
    return env, [nii, zipped]


@pytest.fixture(scope="module")
def study_server(study_files, tmp_path_factory):
    env, _ = study_files
    yield from serve(env, tmp_path_factory)


def _shown_slice(pg) -> int:
    m = re.search(r"Slice (\d+) of 12", pg.inner_text("body"))
    assert m, "no 'Slice N of 12' line"
    return int(m.group(1))


def _settle(pg) -> None:
    pg.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')


def test_upload_nifti_and_zipped_dicom_then_step_through_slices(page, study_server, study_files):  # noqa: F811
    _, files = study_files
    open_page(page, study_server + "/study-review", "Study review")
    page.get_by_text("Waiting for a series").wait_for()
    page.locator('input[type="file"]').first.set_input_files([str(p) for p in files])
    page.get_by_text("Series verdict").wait_for()
    page.get_by_text(re.compile(r"Slice \d+ of 12")).first.wait_for()
    _settle(page)
    # The strip chart and the image / heatmap pair are drawn.
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")
    body = page.inner_text("body")
    assert "Rule:" in body and "contiguous slices" in body and "Research use only" in body
    assert "head.nii.gz · NIfTI" in body  # the first series of the list is shown first
    assert not any(s in body for s in SECRETS)
    shot(page, "e2e_study_1_review")
    before = _shown_slice(page)
    # Keyboard: → is the Next button's shortcut (focus off any input first).
    page.locator("h1").first.click()
    key, expected = ("ArrowRight", before + 1) if before < 12 else ("ArrowLeft", before - 1)
    page.keyboard.press(key)
    page.wait_for_function(f"document.body.innerText.includes('Slice {expected} of 12')")
    _settle(page)
    # And the buttons.
    name, expected2 = ("Previous", expected - 1) if expected > 1 else ("Next", expected + 1)
    page.get_by_role("button", name=name).click()
    page.wait_for_function(f"document.body.innerText.includes('Slice {expected2} of 12')")
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator(".js-plotly-plot").count() >= 2
    shot(page, "e2e_study_2_moved")
    # A click on a point of the strip chart jumps to that slice.
    target = 3 if expected2 != 3 else 4
    plot = page.locator(".js-plotly-plot").first
    xy = plot.evaluate("""(gd, k) => {
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, tr = gd._fullData[0];
        const y = Array.from(tr.y)[k - 1];
        const box = gd.getBoundingClientRect();
        return [box.left + xa._offset + xa.l2p(k), box.top + ya._offset + ya.l2p(y)];
    }""", target)
    page.mouse.click(xy[0], xy[1])
    page.wait_for_function(f"document.body.innerText.includes('Slice {target} of 12')")
    _settle(page)
    # The second series of the upload has its own verdict once chosen.
    page.locator('[data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name=re.compile("AX FLAIR E2E")).click()
    _settle(page)
    page.get_by_text(re.compile(r"Slice \d+ of 12")).first.wait_for()
    page.get_by_text("AX FLAIR E2E · DICOM series").wait_for()
    assert "Series verdict" in page.inner_text("body")
    assert not any(s in page.inner_text("body") for s in SECRETS)
    shot(page, "e2e_study_3_dicom")
