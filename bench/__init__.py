"""Benchmark suite: ``python -m bench`` (full) or ``python -m bench --quick`` (smoke test).

See :mod:`bench.run` for what is measured (each section a module of :mod:`bench.sections`, run on one
:class:`bench.context.BenchContext`); results land in ``bench/results/`` and the README's "Benchmarks" section
is generated into ``bench/README_section.md`` (:mod:`bench.report`).
"""
