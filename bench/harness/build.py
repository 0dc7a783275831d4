"""Compile bench/loadgen.c with gcc, once per source version, outside the work tree."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "loadgen.c"
GCC_TIMEOUT_S = 120


class BuildError(RuntimeError):
    """The load generator could not be built; without it nothing can be measured."""


def build_loadgen(build_dir: Path) -> Path:
    """Return the path of a loadgen binary built from the current source."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError("gcc not found (apt-get install -y gcc)")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = build_dir / f"loadgen-{digest}"
    if binary.exists():
        return binary
    build_dir.mkdir(parents=True, exist_ok=True)
    command = [gcc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=GCC_TIMEOUT_S)
    if done.returncode != 0:
        raise BuildError(f"gcc failed:\n{done.stderr}")
    return binary


def gcc_version() -> str:
    done = subprocess.run(["gcc", "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.splitlines()[0] if done.stdout else "unknown"
