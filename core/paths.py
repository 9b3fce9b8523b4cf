"""Folders of the repository that core reads by default (weights, reports, the app's data folder).

One definition, so a module moving between sub-packages cannot silently point at the wrong folder.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # <repo>/core/paths.py -> <repo>
WEIGHTS_DIR = REPO_ROOT / "weights"
REPORTS_DIR = REPO_ROOT / "reports"
APP_DATA_DIR = REPO_ROOT / "data"  # the app's data folder (app_config.py)
