"""The sections of ``python -m bench``, one module each.

A section module has:

* ``KEY``: its entry in the results JSON;
* ``measure(ctx: bench.context.BenchContext) -> dict``: that entry (a failure is recorded as ``{"error": ...}``
  and the run goes on; ``bench.run`` adds ``section_seconds`` and ``other_programs``);
* ``render(results: dict) -> str``: its part of ``bench/README_section.md``, drawn from a whole results file (so
  a table may show two sections' figures side by side, and older results files render as before); "" when that
  run lacks it or its figures are shown elsewhere. ``study`` is the exception: its render takes its own results
  and writes ``bench/README_section_study.md``;
* optionally ``wanted(ctx) -> bool``: whether this run measures it (``--skip``, quick mode, device, weights).

Summaries (``stage_split``, ``training_epochs``, ``targets``) are computed from the sections' results after them,
untimed; they have the same ``measure`` / ``render``. :mod:`bench.sections.order` lists the sections in the order
they run and in the order the report shows them. (This package imports none of them, so that
``python -m bench.sections.<name>`` runs a section on its own.)
"""
