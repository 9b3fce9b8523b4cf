"""The Study page's browser-side slice viewer, its server half: what it is sent and how its reports are read."""
from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from ui.slice_stack import BrowserView, nearest_missing
from ui.study_view import jpeg_uri, png_uri


def test_nearest_missing_goes_outwards_from_the_shown_slice_and_skips_held_ones():
    assert nearest_missing(10, 4, set(), 5) == [4, 5, 3, 6, 2]
    assert nearest_missing(10, 4, {4, 5}, 3) == [3, 6, 2]
    assert nearest_missing(10, 0, set(), 4) == [0, 1, 2, 3]  # the series' edge: only one side
    assert nearest_missing(10, 9, set(range(10)), 5) == []
    assert nearest_missing(10, 5, set(), 100, within=2) == [5, 6, 4, 7, 3]


def test_browser_view_reads_reports_and_refuses_malformed_ones(monkeypatch):
    import streamlit as st

    state: dict = {}
    monkeypatch.setattr(st, "session_state", state)
    assert BrowserView.read("v", 5) == BrowserView()  # nothing reported yet
    for bad in ({"view": "x"}, {"view": None}, "not a dict", {"view": {"k": 99}}, {"view": {"k": "3"}}):
        state["v"] = bad
        assert BrowserView.read("v", 5).k is None
    state["v"] = {"view": {"k": 2, "grey_id": "g", "blend_id": "b", "greys": "1101100000", "blends": "01",
                           "goto": 3, "tick": 7}}
    view = BrowserView.read("v", 5)
    assert (view.k, view.grey_id, view.blend_id, view.goto, view.tick) == (2, "g", "b", 3, 7)
    assert view.greys == "11011"  # a mask longer than the series is cut to it
    assert view.holds(True, view.greys) == {0, 1, 3, 4}
    assert view.holds(False, view.greys) == set()  # it holds another image set: nothing of this one


def _decode(uri: str, prefix: str) -> np.ndarray:
    assert uri.startswith(prefix)
    return cv2.imdecode(np.frombuffer(base64.b64decode(uri[len(prefix):]), np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("shape", [(24, 32), (24, 32, 3)])
def test_slices_go_to_the_viewer_losslessly_and_heatmaps_as_jpeg(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    back = _decode(png_uri(img), "data:image/png;base64,")
    assert np.array_equal(back if img.ndim == 2 else back[..., ::-1], img)  # PNG: exact, RGB order kept
    if img.ndim == 3:
        smooth = np.zeros(shape, np.uint8)
        smooth[..., 0] = 200
        back = _decode(jpeg_uri(smooth), "data:image/jpeg;base64,")
        assert back.shape == shape and abs(int(back[..., 2].mean()) - 200) <= 3  # red stays red (RGB -> BGR)
