"""The import rules (tools/check_imports.py) hold for gconnect/, and the check catches each kind of breach."""

from __future__ import annotations

from pathlib import Path

from tools.check_imports import check

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_keeps_the_import_rules():
    assert check(ROOT) == []


def make_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "gconnect" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in [p for p in (tmp_path / "gconnect").rglob("*") if p.is_dir()] + [tmp_path / "gconnect"]:
        (folder / "__init__.py").touch()
    return tmp_path


def test_an_import_upwards_is_refused_even_inside_a_function_or_type_checking(tmp_path):
    root = make_tree(
        tmp_path,
        {
            "proxy.py": "",
            "tunnel/a.py": "def f():\n    from ..proxy import X\n",
            "tunnel/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .h2 import s\n",
            "tunnel/h2/s.py": "",
        },
    )
    problems = check(root)
    assert any("gconnect.tunnel.a imports gconnect.proxy" in p for p in problems)
    assert any("gconnect.tunnel.b imports gconnect.tunnel.h2" in p for p in problems)


def test_a_cycle_and_private_names_across_modules_are_refused(tmp_path):
    root = make_tree(
        tmp_path,
        {
            "tunnel/a.py": "from .b import g\nclass A:\n    def _reader(self): pass\n",
            "tunnel/b.py": "from .a import _hidden\ndef g(t):\n    return t._reader()\n",
        },
    )
    problems = check(root)
    assert any("import cycle: gconnect.tunnel.a <-> gconnect.tunnel.b" in p for p in problems)
    assert any("imports private gconnect.tunnel.a._hidden" in p for p in problems)
    assert any("uses _reader, private to another module" in p for p in problems)
