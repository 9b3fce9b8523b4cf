"""Section ``profile_decode``: cProfile of one pipeline worker's job (read + hash + decode + preprocess), top
functions by own time."""
from __future__ import annotations

import time

from bench.context import BenchContext

KEY = "profile_decode"


def measure(ctx: BenchContext) -> dict:
    import cProfile
    import pstats
    from pathlib import Path

    from core.inference.pipeline import load_file

    spec, files = ctx.bundle.spec, ctx.files[:200 if not ctx.quick else 8]
    for f in files[:3]:
        load_file(f, spec)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for f in files:
        load_file(f, spec)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values()) or 1.0
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:10]
    top = [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "share_pct": round(100 * v[2] / total, 1),
            "ms_per_image": round(1000 * v[2] / len(files), 3)} for k, v in rows]
    return {"images": len(files), "ms_per_image": round(1000 * wall / len(files), 2), "top_functions": top}


def render(r: dict) -> str:
    pdec = r.get(KEY, {})
    if not pdec.get("top_functions"):
        return ""
    fns = ", ".join(f"{o['function']} {o['share_pct']}%" for o in pdec["top_functions"][:6])
    return f"Profile of one worker's decode + preprocess ({pdec['ms_per_image']} ms/image, cProfile, own time): {fns}."
