"""The Study page's slice viewer in the browser (``ui/assets/slice_stack.*``): mounting it and reading it back.

Why a browser-side viewer: moving to another slice through the server (a fragment rerun, the websocket round trip
and a plotly redraw of the image pair) took about 0.5 s in a real browser, against a target of 0.15 s. The viewer
(a Streamlit custom component v2: plain HTML/CSS/JS in the page, no iframe, nothing to build) keeps every slice
and heatmap it has been sent, so ←/→, its slider and buttons redraw at once. After each move it reports the shown
slice and a mask of the slices it holds (:class:`BrowserView`); the page's fragment reruns, computes what is
missing nearest to the shown slice first, and sends at most a few dozen images per rerun (:func:`nearest_missing`),
while ``pending`` tells the viewer to ask again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

ASSETS = Path(__file__).with_name("assets")
GREYS_PER_RUN = 32  # PNG slices sent per rerun (about 30-60 kB each at 240 x 240)
BLENDS_PER_RUN = 32  # heatmap overlays sent per rerun (JPEG, about 15-25 kB each)

_stack = st.components.v2.component(
    "mri_slice_stack",
    html=(ASSETS / "slice_stack.html").read_text(encoding="utf-8"),
    css=(ASSETS / "slice_stack.css").read_text(encoding="utf-8"),
    js=(ASSETS / "slice_stack.js").read_text(encoding="utf-8"),
)


@dataclass(frozen=True)
class BrowserView:
    """What the viewer in the page last reported: the shown slice (0-based; None before it reported), the ids of
    the image sets it holds, which slices of each it holds ('1' per held slice), the last server jump it applied
    and a counter that grows with each report."""

    k: int | None = None
    grey_id: str = ""
    blend_id: str = ""
    greys: str = ""
    blends: str = ""
    goto: int = -1
    tick: int = 0

    @classmethod
    def read(cls, key: str, n: int) -> "BrowserView":
        """The view stored under the component's ``key`` (anything malformed reads as "nothing held")."""
        raw = st.session_state.get(key)
        try:
            view = raw.get("view") if raw is not None else None
        except AttributeError:
            view = None
        if not isinstance(view, dict):
            return cls()
        k = view.get("k")
        k = int(k) if isinstance(k, (int, float)) and 0 <= int(k) < n else None
        text = lambda name, most: str(view.get(name) or "")[:most]  # noqa: E731
        goto = view.get("goto")
        return cls(k, text("grey_id", 200), text("blend_id", 200), text("greys", n), text("blends", n),
                   int(goto) if isinstance(goto, (int, float)) else -1, int(view.get("tick") or 0))

    @staticmethod
    def holds(same_set: bool, mask: str) -> set[int]:
        """The slices a mask says are held; none when the viewer holds another image set (``same_set`` False)."""
        return {i for i, c in enumerate(mask) if c == "1"} if same_set else set()


def nearest_missing(n: int, k: int, held: set[int], limit: int, within: int | None = None) -> list[int]:
    """Up to ``limit`` slices not in ``held``, nearest to ``k`` first (k, k+1, k-1, k+2, ...), at most ``within``
    slices away (None: the whole series)."""
    out: list[int] = []
    reach = n if within is None else within
    for d in range(reach + 1):
        for j in ((k,) if d == 0 else (k + d, k - d)):
            if 0 <= j < n and j not in held:
                out.append(j)
                if len(out) >= limit:
                    return out
    return out


def slice_stack(key: str, *, n: int, k: int, grey_id: str, blend_id: str, greys: dict[int, str],
                blends: dict[int, dict], captions: list[str], colours: list[str], goto: dict, pending: bool) -> None:
    """Mount (or update) the viewer. ``greys``: {slice: PNG data URI}; ``blends``: {slice: {src, title, peak,
    scale}}; ``captions``: one line per slice; ``colours``: the heatmap's colour bar, 0 to 1; ``goto``: the last
    jump asked for on the server ({k, nonce}); ``pending``: more images will follow (the viewer asks again)."""
    _stack(key=key, data={"n": n, "k": k, "grey_id": grey_id, "blend_id": blend_id,
                          "greys": {str(j): u for j, u in greys.items()},
                          "blends": {str(j): b for j, b in blends.items()}, "captions": captions,
                          "colours": colours, "goto": goto, "pending": bool(pending)},
           on_view_change=_ignore)


def _ignore() -> None:
    """The fragment reads the view itself on the rerun the viewer's report starts."""
