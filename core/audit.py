"""``python -m core.audit``: audit a labelled dataset: duplicates across splits, sizes, channels, class balance.
The command line only; the work (and the ``--help`` text, its module docstring) is in
:mod:`core.evaluation.data_audit`.

    python -m core.audit ROOT --out data_audit.json     # ROOT/<split>/<class>/<images>, e.g. Training/, Testing/
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.data.dataset import FileRecord, class_names_of, index_tree
from core.evaluation import data_audit
from core.evaluation.data_audit import DEFAULT_NEAR_DISTANCE, audit_splits
from core.preprocess import PreprocessSpec


def build_parser() -> argparse.ArgumentParser:
    """Every option of ``python -m core.audit``."""
    p = argparse.ArgumentParser(description=data_audit.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("root", help="dataset root holding split folders (e.g. Training/, Testing/), each ROOT/<split>/<class>/")
    p.add_argument("--out", default="data_audit.json", help="where to write the JSON report")
    p.add_argument("--near-distance", type=int, default=DEFAULT_NEAR_DISTANCE, help="pHash Hamming bits for near duplicates")
    p.add_argument("--cache-dir", default=".cache", help="decode cache folder")
    p.add_argument("--workers", type=int, default=2, help="decode processes")
    return p


def index_splits(root: Path, cache_dir: str, workers: int) -> tuple[dict[str, list[FileRecord]], list[str]]:
    """The records of every split folder of ``root`` (sorted by name) and the class names, read from the first
    split's class folders."""
    split_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    class_names = class_names_of(split_dirs[0])
    spec = PreprocessSpec()
    return {d.name: index_tree(d, class_names, spec, cache_dir, workers, d.name)[0] for d in split_dirs}, class_names


def main(argv: list[str] | None = None) -> int:
    """``python -m core.audit``: writes the full report to ``--out``, prints it without examples and paths."""
    args = build_parser().parse_args(argv)
    splits, class_names = index_splits(Path(args.root), args.cache_dir, args.workers)
    report, _ = audit_splits(splits, class_names, args.near_distance)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("examples", "unreadable")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
