"""Where a Python proxy's instructions go, from two callgrind runs of N and N + extra units of work
(as bench.forward_instructions makes them): per unit, by library (the interpreter, llhttp, libev
and gevent, greenlet, libc), by C function (``callgrind_annotate``, self cost), and the number of
Python frames run (calls of CPython's ``_PyFrame_Clear``, which ends every frame of a Python
function; Cython's compiled functions, gevent's, make none).

    python -m bench.callgrind_split SMALL.out LARGE.out EXTRA
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

#: A function line of ``callgrind_annotate``: count, percentage, file:function, [object].
_LINE = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(\S+?):(\S+)(?:\s+\[(.+)\])?\s*$")
#: Library by a piece of its object or source path, first match wins; the rest is "other".
LIBRARIES = (
    ("llhttp", ("httptools", "llhttp")),
    ("libev + gevent", ("gevent",)),
    ("greenlet", ("greenlet",)),
    ("CPython", ("Python-3", "libpython")),
    ("libc", ("libc.so", "./nptl/", "./malloc/", "./string/", "libc-")),
)
#: CPython 3.11 clears every Python frame with this function as it ends; the frames' set-up is
#: inlined in the specialised calls, so it cannot be counted.
FRAME_END = "_PyFrame_Clear"


def library(path: str) -> str:
    for name, marks in LIBRARIES:
        if any(mark in path for mark in marks):
            return name
    return "other"


def functions(out: Path) -> dict[str, int]:
    """Self cost of every function in *out*, as ``function (library)``."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--inclusive=no", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    costs: dict[str, int] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        count, path, function, obj = match.groups()
        key = f"{function} ({library((obj or '') + ' ' + path)})"
        costs[key] = costs.get(key, 0) + int(count.replace(",", ""))
    return costs


def python_frames(out: Path) -> int:
    """How many Python frames ended while counting was on."""
    names: dict[str, str] = {}
    calls, target = 0, ""
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("fn=(", "cfn=(")):
            ident, _, name = line.partition("=")[2].partition(" ")
            if name:
                names[ident] = name
            target = names.get(ident, "") if line.startswith("cfn") else target
        elif line.startswith("calls=") and target == FRAME_END:
            calls += int(line[6:].split()[0])
            target = ""
    return calls


def split(small: Path, large: Path, extra: int, top: int = 25) -> dict:
    """Per unit of work: instructions by library, the *top* functions, and Python frames run."""
    before, after = functions(small), functions(large)
    per_function = {k: (after.get(k, 0) - before.get(k, 0)) / extra for k in set(before) | set(after)}
    libraries: dict[str, float] = {}
    for key, value in per_function.items():
        name = key.rpartition(" (")[2].rstrip(")")
        libraries[name] = libraries.get(name, 0.0) + value
    ranked = sorted(per_function.items(), key=lambda kv: -kv[1])
    return {
        "by_library": {k: round(v) for k, v in sorted(libraries.items(), key=lambda kv: -kv[1])},
        "top_functions": {k: round(v) for k, v in ranked[:top]},
        "python_frames": round((python_frames(large) - python_frames(small)) / extra, 1),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(split(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])), indent=1))
