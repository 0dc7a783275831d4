"""README's test command is what CI runs: ``.ci/run`` must run exactly that line,
so a server a test needs is installed for a user who follows README as for CI."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = [line.strip() for line in (ROOT / "README.rst").read_text().splitlines()]
    assert ci_command in readme
    assert ci_command.endswith("python -m pytest")
