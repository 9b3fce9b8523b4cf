"""``python -m core.batch``: Review a folder (or list file) of slices, or a folder of studies: one CSV row per file or series.

Entry point only (the README and model cards quote this command); the work is in :mod:`core.review.folder`.
"""
from core.review.folder import main

if __name__ == "__main__":
    raise SystemExit(main())
