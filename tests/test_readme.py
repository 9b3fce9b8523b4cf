"""The README's figures are generated from what the code wrote, and stay in step with it."""
from __future__ import annotations

from tools import readme_sections


def test_readme_model_and_bench_blocks_match_the_shipped_files():
    # weights/metrics.json + model_card.json (train.py) and bench/README_section.md (python -m bench) are the
    # sources; `python -m tools.readme_sections` rewrites the README blocks from them.
    assert readme_sections.main(["--check"]) == 0


def test_rendered_block_reports_every_target_and_the_commands():
    text = readme_sections.render_model_results()
    for target, *_ in readme_sections.TARGETS:
        assert target in text
    assert "python train.py" in text and "--seed" in text
    assert "| Testing, full |" in text and "| Testing, leakage-free subset¹ |" in text
