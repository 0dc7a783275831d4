"""What the HTTP/2 benches share around bench/h2.py's proxy: the TLS files, other trees, results.

``tls_files()`` makes a throwaway CA and a certificate for 127.0.0.1 in a temporary directory
(left for the system to clean, as the proxies read it until they stop); ``tree_options(tree)``
are the ProxyProcess keywords that run the gconnect package of an extracted tree;
``write_results`` writes a result's ``.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import tempfile
from pathlib import Path

import trustme


def tls_files() -> tuple[tuple[str, str], ssl.SSLContext]:
    """(certificate path, key path) for the proxy's TLS listener, and a client context trusting them."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    tmp = Path(tempfile.mkdtemp())
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return (str(tmp / "cert.pem"), str(tmp / "key.pem")), context


def tree_options(tree: Path | None) -> dict:
    """ProxyProcess keywords running the gconnect of *tree* (None: this tree, no keywords)."""
    if tree is None:
        return {}
    # cwd and PYTHONPATH: python -m puts the working directory first on sys.path.
    return {"cwd": tree, "env": {"PYTHONPATH": str(tree)}}


def tree_commit() -> str:
    """This tree's commit (and whether it has changes not committed)."""
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or "unknown"


def write_results(out: Path, stem: str, result: dict, table: str) -> None:
    """*stem*.json (the figures) and *stem*.md (*table*) in *out*; the table printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(table)
    print(table)
