"""Slice changes of the Study review page as a reader sees them: in a real browser, from the arrow key until the
new slice's heatmap is decoded on screen.

Starts the dashboard (``streamlit run``, this machine, the given weights), opens the Study review page in the
Debian Chromium through Playwright, uploads the synthetic 155-slice volume of ``bench.sections.study``, lets the
page settle (the viewer has been sent the slices and the heatmaps computed ahead), then presses → ``steps``
times, ``gap_s`` apart (a reader looking at each slice briefly). Each step is timed twice, from the key press as
Playwright sends it: until the viewer's "Slice N of n" line changes, and until slice N's heatmap image is
decoded. Returns ``{"skipped": reason}`` when Chromium or Playwright is missing.

    python -m bench.study_browser [--weights weights] [--steps 30] [--gap 0.5]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
_BLEND_READY = """(im, k) => new Promise(done => {
    const t0 = performance.now();
    const poll = () => {
        if (im.dataset.slice === String(k) && im.complete && im.naturalWidth > 0) done(true);
        else if (performance.now() - t0 > 30000) done(false);
        else requestAnimationFrame(poll);
    };
    poll();
})"""
_LABEL_READY = """(el, n) => new Promise(done => {
    const poll = () => el.textContent.startsWith('Slice ' + n + ' ') ? done(true) : requestAnimationFrame(poll);
    poll();
})"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(weights: str, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, MRI_WEIGHTS_DIR=str(Path(weights).resolve()), MRI_APP_DATA=str(data_dir),
               MRI_DEVICE="cpu", MRI_ALLOWED_ROOTS=str(data_dir))
    env.pop("MRI_APP_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port",
                             str(port), "--server.address", "localhost", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("the dashboard did not start within 120 s")


def _stats(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=10) if len(ms) >= 2 else ms * 9
    return {"p50": round(statistics.median(ms), 1), "p90": round(q[8], 1), "max": round(max(ms), 1), "n": len(ms)}


def browser_slice_changes(weights: str, volume: bytes, steps: int = 30, gap_s: float = 0.5,
                          settle_s: float = 8.0) -> dict:
    """Key → new slice line, and key → its heatmap decoded, in ms (see the module docstring)."""
    if not Path(CHROMIUM).is_file():
        return {"skipped": f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"}
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright is not installed"}
    with tempfile.TemporaryDirectory(prefix="bench-study-browser-") as tmp:
        nii = Path(tmp) / "volume.nii.gz"
        nii.write_bytes(volume)
        proc, url = _serve(weights, Path(tmp))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1440, "height": 2000})
                page.set_default_timeout(180_000)
                t0 = time.perf_counter()
                page.goto(f"{url}/study-review", wait_until="domcontentloaded")
                page.get_by_text("Waiting for a series").wait_for()
                page.keyboard.press("Escape")  # a first deep link may show "page not found" over the page
                page.locator('input[type="file"]').first.set_input_files(str(nii))
                page.locator(".sv-blend[data-slice]:not([data-slice=''])").wait_for()
                first_heatmap_s = time.perf_counter() - t0
                time.sleep(settle_s)
                page.locator("h1").first.click()  # keys go to the page, not to an input
                # Both probes once on the shown slice first: Playwright's first evaluate in a page sets itself up
                # (about 0.3 s here), which is not the viewer's time.
                k = int(page.locator(".sv-blend").get_attribute("data-slice") or 0)
                page.locator(".sv-label").evaluate(_LABEL_READY, k + 1)
                page.locator(".sv-blend").evaluate(_BLEND_READY, k)
                label, blend = [], []
                for _ in range(steps):
                    k = int(page.locator(".sv-blend").get_attribute("data-slice") or 0)
                    t = time.perf_counter()
                    page.keyboard.press("ArrowRight")
                    page.locator(".sv-label").evaluate(_LABEL_READY, k + 2)
                    label.append(1000 * (time.perf_counter() - t))
                    if not page.locator(".sv-blend").evaluate(_BLEND_READY, k + 1):
                        raise RuntimeError(f"slice {k + 2}'s heatmap was not shown within 30 s")
                    blend.append(1000 * (time.perf_counter() - t))
                    time.sleep(gap_s)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
    return {"steps": steps, "gap_s": gap_s, "settle_s": settle_s,
            "upload_to_first_heatmap_s": round(first_heatmap_s, 2),
            "key_to_slice_line_ms": _stats(label), "key_to_heatmap_ms": _stats(blend),
            "key_to_heatmap_each_ms": [round(x) for x in blend]}


def main(argv: list[str] | None = None) -> int:
    from bench.sections.study import volume_bytes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--gap", type=float, default=0.5, help="seconds between key presses")
    args = p.parse_args(argv)
    print(json.dumps(browser_slice_changes(args.weights, volume_bytes(), args.steps, args.gap), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
