"""The README section of a ``python -m bench`` run: the machine and model lines, then each section's part
(``bench.sections.REPORTED``), headed as ``bench/README_section.md`` is."""
from __future__ import annotations

from bench.common import REPO
from bench.sections.order import REPORTED


def header(r: dict) -> list[str]:
    """The machine, the default inference path, and how busy the machine was."""
    m = r["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    flags = m.get("cpu_flags") or []
    parts = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM{gpu}; CPU features "
             f"{', '.join(flags) or 'without AVX2'}; torch {m['torch']}, "
             f"Python {m['python']}; device `{m['device']}`. Date: {r['date']}. Mode: {r['mode']}. "
             f"Model: {r['config']['model']}. Data: {r['config']['data']}."]
    # Figures from machines with and without native bf16 differ about twofold; say which this one is.
    why = (" (this CPU has no native bf16, AVX-512 BF16 or AMX, so the predictor serves fp32)"
           if m["device"] == "cpu" and r["config"]["default_backend"].startswith("fp32")
           and not {"avx512_bf16", "amx_bf16"} & set(flags) else "")
    parts.append(f"Default inference path chosen by the predictor: **{r['config']['default_backend']}**{why}.")
    busy = {k: v["other_programs"]["foreign_share_of_machine"] for k, v in r.items()
            if isinstance(v, dict) and isinstance(v.get("other_programs"), dict)}
    if busy:
        worst = max(busy, key=busy.get)
        noisy = [k for k, v in busy.items() if v > 0.05]
        parts.append(f"Other programs on the machine during the run: at most {100 * busy[worst]:.1f}% of its CPU "
                     f"({worst})" + (f"; sections with > 5%: {', '.join(noisy)} (not clean)" if noisy else
                                     "; every section ran on a quiet machine") + ".")
    return parts


def render_results(r: dict) -> str:
    """The tables and lines of a results file (what ``python -m bench`` prints)."""
    parts = header(r) + [text for text in (section.render(r) for section in REPORTED) if text]
    return "\n\n".join(parts) + "\n"


def readme_section(r: dict, text: str) -> str:
    """``text`` under the "## Benchmarks" heading and how-to paragraph, with ``bench/analysis.md`` when present."""
    minutes = round((r.get("seconds") or 0) / 60)
    took = f"{minutes} min on the machine below" if minutes else "roughly half an hour on 2 CPU cores"
    others = sorted(str(f.relative_to(REPO)) for f in (REPO / "bench" / "results").glob("*.json")
                    if str(f.relative_to(REPO)) != r["output"])
    head = (f"## Benchmarks\n\nRun `python -m bench` (full, {took}; run it on a quiet machine) or "
            "`python -m bench --quick` (smoke test, < 1 min, numbers not meaningful). It measures on whatever machine "
            "it runs, prints the tables below and writes `bench/results/<machine>-<date>.json`. Figures below: "
            f"`{r['output']}`" + (f", from `{r['command']}`" if r.get("command") else "")
            + (f"; earlier runs, on other machines or models: {', '.join(f'`{o}`' for o in others)}" if others else "")
            + ".\n\n")
    notes = REPO / "bench" / "analysis.md"
    tail = "\n" + notes.read_text() if notes.is_file() else ""
    return head + text + tail
