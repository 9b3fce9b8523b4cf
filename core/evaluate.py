"""``python -m core.evaluate``: Evaluate a model on a labelled folder, or on the held-out parts of its data spec.

Entry point only (the README and model cards quote this command); the work is in :mod:`core.evaluation.evaluate`.
"""
from core.evaluation.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
