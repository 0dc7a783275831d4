"""Another version of gconnect to measure against: the package at a commit, extracted with git
archive into a temporary directory (run it with ``cwd`` and ``PYTHONPATH`` set to that directory:
``python -m`` puts the working directory ahead of PYTHONPATH)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent.parent
GIT_TIMEOUT_S = 120


def extract(commit: str) -> Path:
    """The gconnect package at *commit*, in a new temporary directory the caller removes."""
    directory = Path(tempfile.mkdtemp(prefix=f"gconnect-{commit}-"))
    archive = subprocess.run(
        ["git", "archive", commit, "gconnect"], cwd=REPO_DIR, capture_output=True, check=True, timeout=GIT_TIMEOUT_S
    )
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True, timeout=GIT_TIMEOUT_S)
    return directory
