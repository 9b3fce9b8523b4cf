"""``python -m core.audit``: Audit a labelled dataset: duplicates across splits, sizes, channels, class balance.

Entry point only (the README and model cards quote this command); the work is in :mod:`core.evaluation.data_audit`.
"""
from core.evaluation.data_audit import main

if __name__ == "__main__":
    raise SystemExit(main())
