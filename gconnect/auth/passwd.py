"""``gconnect passwd``: write a bcrypt entry into an htpasswd file, the way
``htpasswd -B`` does (``$2y$`` prefix, so Apache reads the file too)."""

from __future__ import annotations

import os
import tempfile

import bcrypt

from .htpasswd import BCRYPT_MAX_PASSWORD_BYTES


def check_user_name(user: str) -> None:
    """htpasswd's rule: no ':' (the field separator); we also refuse blanks and
    control characters, which would not survive a Basic header or the log."""
    if not user or ":" in user or any(ch.isspace() or not ch.isprintable() for ch in user):
        raise ValueError(f"invalid user name {user!r}: no ':', spaces or control characters")


def hash_password(password: str, *, rounds: int) -> str:
    """A ``$2y$`` bcrypt hash of *password*; ValueError if bcrypt cannot hold it."""
    raw = password.encode("utf-8")
    if not raw:
        raise ValueError("empty password")
    if len(raw) > BCRYPT_MAX_PASSWORD_BYTES:
        # bcrypt ignores what follows byte 72: refuse rather than silently truncate.
        raise ValueError(f"password longer than {BCRYPT_MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    hashed = bcrypt.hashpw(raw, bcrypt.gensalt(rounds)).decode("ascii")
    return "$2y$" + hashed[4:]


def set_password(path: str, user: str, password: str, *, rounds: int = 10) -> bool:
    """Add or replace *user*'s entry in *path*; True if the user was added.

    Other lines (comments, other users) are kept as they are. The new file is
    written beside the old one and renamed over it.
    """
    check_user_name(user)
    entry = f"{user}:{hash_password(password, rounds=rounds)}"
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        lines, mode = [], 0o600
    added = True
    out = []
    for line in lines:
        if line.partition(":")[0] == user:
            if added:
                out.append(entry)
            added = False  # later duplicates are dropped: the first wins anyway
            continue
        out.append(line)
    if added:
        out.append(entry)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gconnect-passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(out) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return added
