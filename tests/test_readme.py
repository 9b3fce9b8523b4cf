"""The README's figures are generated from what the code wrote, and stay in step with it."""
from __future__ import annotations

from tools import readme_sections


def test_readme_model_and_bench_blocks_match_the_shipped_files():
    # weights/metrics.json + model_card.json (train.py) and bench/README_section.md (python -m bench) are the
    # sources; `python -m tools.readme_sections` rewrites the README blocks from them.
    assert readme_sections.main(["--check"]) == 0


def test_rendered_block_reports_every_target_per_source_and_the_commands():
    import json

    from core.evaluation.targets import TARGETS

    text = readme_sections.render_model_results()
    for target in TARGETS:
        assert target.text in text
    assert "python train.py" in text and "--seed" in text
    metrics = json.loads((readme_sections.WEIGHTS / "metrics.json").read_text())
    for m in metrics["sets"].values():  # one row per held-out part, titled as on the metrics page
        if m.get("part") == "test":
            assert f"| {m['title']} | {m['n']} |" in text
    assert "`other_lesion`" in text and "By MRI sequence" in text


def test_shift_report_is_for_the_shipped_model():
    import json

    report = json.loads(readme_sections.SHIFT_REPORT.read_text())
    card = json.loads((readme_sections.WEIGHTS / "model_card.json").read_text())
    from core.model.card import ModelCard

    # Weights, version and test-time augmentation: a re-fit (train.py --epochs 0) keeps the weights' SHA-256.
    assert report["model"] == ModelCard.from_dict(card).identity, "re-run `python -m tools.shift_eval`"
    assert "none" in report["shifts"] and all(0 <= r["accuracy"] <= 1 for r in report["shifts"].values())


def test_make_reproduce_weights_runs_the_cards_commands():
    """`make reproduce-weights` must re-run exactly the recorded chain (paths for --out/--init-from aside)."""
    import json
    import shlex

    def core_args(cmd: str) -> list[str]:
        words, out, skip = shlex.split(cmd), [], False
        for w in words:
            if skip:
                skip = False
            elif w in ("--out", "--init-from"):
                skip = True
            else:
                out.append(w)
        return out

    from core.model.card import ModelCard

    card = json.loads((readme_sections.WEIGHTS / "model_card.json").read_text())
    recorded, _ = readme_sections._commands(ModelCard.from_dict(card).training)
    make = (readme_sections.REPO / "Makefile").read_text().split("reproduce-weights:", 1)[1].split("\n\n", 1)[0]
    steps = [line.strip().replace("$(PY)", "python") for line in make.splitlines()[1:] if line.startswith("\t")]
    # A default that changed after a step ran is pinned in the Makefile to what that step used (the step's
    # recorded command is how it was typed, so it does not name the flag).
    pinned = {"--head-search": "otsu"}

    def unpin(make_words: list[str], recorded_words: list[str]) -> list[str]:
        out, i = [], 0
        while i < len(make_words):
            flag = make_words[i]
            if flag in pinned and flag not in recorded_words and make_words[i + 1] == pinned[flag]:
                i += 2
                continue
            out.append(flag)
            i += 1
        return out

    assert len(steps) == len(recorded)
    assert [unpin(core_args(m), core_args(r)) for m, r in zip(steps, recorded)] == [core_args(c) for c in recorded]
