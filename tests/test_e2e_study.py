"""Real-browser test of the Study review page: upload a .nii.gz and a zipped DICOM series, see the verdicts, move
through the slices with the → key, the viewer's buttons and slider and the strip chart, and see each slice's heatmap.

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
    """The slice the browser-side viewer shows (its label is in the component's shadow root)."""
    m = re.match(r"Slice (\d+) of 12", pg.locator(".sv-label").inner_text())
    assert m, "no 'Slice N of 12' line in the viewer"
    return int(m.group(1))


def _heatmap_shown(pg, k: int) -> None:
    """Wait until the viewer shows slice ``k``'s heatmap (1-based), decoded, and the page has followed it."""
    pg.locator(f".sv-blend[data-slice='{k - 1}']").wait_for()
    assert pg.locator(".sv-blend").evaluate(
        "im => (im.complete && im.naturalWidth > 0) || new Promise(done => {"
        " im.addEventListener('load', () => done(true), {once: true});"
        " im.addEventListener('error', () => done(false), {once: true}); })")
    pg.wait_for_function(f"document.body.innerText.includes('Slice {k} of 12 (calibrated)')")


def _settle(pg) -> None:
    pg.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')


def test_upload_nifti_and_zipped_dicom_then_step_through_slices(page, study_server, study_files):  # noqa: F811
    _, files = study_files
    open_page(page, study_server + "/study-review", "Study review")
    page.get_by_text("Waiting for a series").wait_for()
    page.locator('input[type="file"]').first.set_input_files([str(p) for p in files])
    page.get_by_text("Series verdict").wait_for()
    page.locator(".sv-blend[data-slice]:not([data-slice=''])").wait_for()
    _settle(page)
    # The strip chart, and the viewer's image / heatmap pair, are drawn.
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 1")
    body = page.inner_text("body")
    assert "Rule:" in body and "contiguous slices" in body and "Research use only" in body
    assert "head.nii.gz · NIfTI" in body  # the first series of the list is shown first
    assert not any(s in body for s in SECRETS)
    shot(page, "e2e_study_1_review")
    before = _shown_slice(page)
    # Keyboard: ← → step the viewer (focus off any input first); the heatmap of the new slice is drawn.
    page.locator("h1").first.click()
    key, expected = ("ArrowRight", before + 1) if before < 12 else ("ArrowLeft", before - 1)
    page.keyboard.press(key)
    _heatmap_shown(page, expected)
    assert _shown_slice(page) == expected
    _settle(page)
    # The viewer's buttons, and its slider.
    button, expected2 = (".sv-prev", expected - 1) if expected > 1 else (".sv-next", expected + 1)
    page.locator(button).click()
    _heatmap_shown(page, expected2)
    page.locator(".sv-range").fill("6" if expected2 != 6 else "7")
    expected3 = 6 if expected2 != 6 else 7
    _heatmap_shown(page, expected3)
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    shot(page, "e2e_study_2_moved")
    # A click on the strip chart, in a slice's column, jumps the viewer to that slice.
    target = 3 if expected3 != 3 else 4
    plot = page.locator(".js-plotly-plot").first
    xy = plot.evaluate("""(gd, k) => {  // anywhere in the slice's column: here, halfway up
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const box = gd.getBoundingClientRect();
        return [box.left + xa._offset + xa.l2p(k), box.top + ya._offset + ya.l2p(0.5)];
    }""", target)
    page.mouse.click(xy[0], xy[1])
    _heatmap_shown(page, target)
    assert _shown_slice(page) == target
    _settle(page)
    # ← → on a widget that uses them itself (here the overlay-opacity slider) are that widget's, not a step.
    page.get_by_role("slider").first.focus()
    page.keyboard.press("ArrowRight")
    _settle(page)
    assert _shown_slice(page) == target
    # The second series of the upload has its own verdict once chosen.
    page.locator('[data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name=re.compile("AX FLAIR E2E")).click()
    _settle(page)
    page.get_by_text("AX FLAIR E2E · DICOM series").wait_for()
    page.locator(".sv-blend[data-slice]:not([data-slice=''])").wait_for()
    assert "Series verdict" in page.inner_text("body")
    assert not any(s in page.inner_text("body") for s in SECRETS)
    shot(page, "e2e_study_3_dicom")
