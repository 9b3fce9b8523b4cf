"""Heatmaps of one reviewed series' slices (:func:`slice_cam`), kept once computed and computed ahead for the
neighbours (no streamlit).

Moving to another slice must show its heatmap at once (the target is 150 ms), but one Grad-CAM pass on a
2-core CPU costs about as much on its own. :class:`SliceCams` therefore keeps every map it computed (up to
``limit``, least recently shown dropped first) and, after a slice is shown, computes its neighbours in one
background thread (:meth:`SliceCams.prefetch`), so the slice the reader steps to next is usually ready. A slice
asked for while the thread is computing it is waited for, not computed twice; asking for other neighbours
replaces the thread's remaining work (a reader who jumps far does not wait for stale neighbours).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from core.explain.cam import CamResult, Explainer, on_reading_scale
from core.preprocess import Preprocessed, head_mask
from core.io.series import Series
from core.inference.study import SeriesReview, slice_inputs

DEFAULT_LIMIT = 48  # each entry holds a slice's map and preprocessed image (~0.5 MB at 240 x 240)
NEIGHBOURS = 3  # slices computed ahead on each side of the shown one


def slice_cam(explainer: Explainer, series: Series, review: SeriesReview, k: int, method: str = "gradcam",
              target: int | None = None) -> tuple[CamResult, Preprocessed]:
    """The heatmap of slice ``k`` as a reader should see it (kept to the head; another class's map on the
    predicted class's scale), and the slice's preprocessed input. Computed on demand: one slice at a time,
    through ``explainer`` (the ``Explainer`` of the predictor that made ``review``)."""
    predictor = explainer.predictor
    item = slice_inputs(predictor, series, review.plane, review.scale, [k])[0]
    predicted = int(np.nan_to_num(review.probabilities[k], nan=-1.0).argmax())
    raw = explainer.compute([item], [predicted if target is None else target], method)[0]
    reference = None
    if target is not None and target != predicted:
        reference = explainer.compute([item], [predicted], method)[0]
    return on_reading_scale(raw, head_mask(item, predictor.spec), reference), item


class SliceCams:
    """The heatmaps of one series, plane, CAM method and target class (None: each slice's predicted class)."""

    def __init__(self, explainer: Explainer, series: Series, review: SeriesReview, method: str = "gradcam",
                 target: int | None = None, limit: int = DEFAULT_LIMIT):
        self.explainer, self.series, self.review = explainer, series, review
        self.method, self.target, self.limit = method, target, max(1, int(limit))
        self._done: OrderedDict[int, tuple[CamResult, Preprocessed]] = OrderedDict()
        self._busy: dict[int, threading.Event] = {}  # slice -> set when its computation ends
        self._lock = threading.Lock()
        self._wanted: list[int] = []  # the background thread's remaining work, nearest first
        self._thread: threading.Thread | None = None
        self._running = False

    def busy(self) -> bool:
        """True while the background thread still has slices to compute."""
        with self._lock:
            return self._running

    def cached(self, k: int) -> bool:
        with self._lock:
            return k in self._done

    def get(self, k: int) -> tuple[CamResult, Preprocessed]:
        """Slice ``k``'s map (:func:`slice_cam`) and preprocessed input: kept, in flight or computed now.
        Raises what ``slice_cam`` raises (the page shows it)."""
        while True:
            with self._lock:
                if k in self._done:
                    self._done.move_to_end(k)
                    return self._done[k]
                busy = self._busy.get(k)
                if busy is None:
                    self._busy[k] = threading.Event()
                    break
            busy.wait()  # the background thread is computing it; then read it (or compute it if that failed)
        return self._compute(k)

    def _compute(self, k: int) -> tuple[CamResult, Preprocessed]:
        try:
            value = slice_cam(self.explainer, self.series, self.review, k, self.method, self.target)
            with self._lock:
                self._done[k] = value
                self._done.move_to_end(k)
                while len(self._done) > self.limit:
                    self._done.popitem(last=False)
            return value
        finally:
            with self._lock:
                event = self._busy.pop(k, None)
            if event is not None:
                event.set()

    def neighbours(self, k: int, around: int = NEIGHBOURS) -> list[int]:
        """Slices next to ``k`` in the order a reader reaches them: k+1, k-1, k+2, k-2, ... (inside the series)."""
        n = self.review.n_slices
        out = []
        for d in range(1, around + 1):
            out += [j for j in (k + d, k - d) if 0 <= j < n]
        return out

    def prefetch(self, ks: list[int]) -> None:
        """Compute ``ks`` (those not kept yet) in the background, in order; replaces earlier prefetch work."""
        with self._lock:
            self._wanted = [k for k in ks if k not in self._done]
            if not self._wanted or self._running:
                return  # a running thread picks up the new work list
            self._running = True
            self._thread = threading.Thread(target=self._work, name="slice-cams", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background work is done (tests, the bench); True when it is."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _work(self) -> None:
        while True:
            with self._lock:
                k = None
                while self._wanted:
                    j = self._wanted.pop(0)
                    if j not in self._done and j not in self._busy:
                        k = j
                        self._busy[k] = threading.Event()
                        break
                if k is None:
                    self._running = False  # decided under the lock: a later prefetch starts a new thread
                    return
            try:
                self._compute(k)
            except Exception:  # noqa: BLE001 - ahead-of-time work only; the page computes it again and shows why
                pass
