"""htpasswd files: the formats Apache's ``htpasswd`` writes, parsed and checked.

* bcrypt (``htpasswd -B``, ``$2y$``/``$2b$``/``$2a$``), checked with ``bcrypt``;
* apr1-MD5 (``$apr1$``, htpasswd's default), SHA1 (``{SHA}``) and SHA-crypt
  (``$5$``/``$6$``), checked with ``passlib`` and reported as weak;
* plaintext, only when the caller allows it (anything not recognised above is
  taken for plaintext, including 13-character DES crypt).

Pure functions of the file's text and a password: no cache, no policy, no I/O
beyond reading the file.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging

import bcrypt

log = logging.getLogger(__name__)

#: bcrypt hashes only the first 72 bytes (OpenBSD's bcrypt(3), Apache htpasswd -B
#: document the truncation); the ``bcrypt`` package refuses longer input instead.
BCRYPT_MAX_PASSWORD_BYTES = 72
#: Cost of the dummy hash checked for unknown users when the file has no bcrypt
#: entry to copy it from; equal to ``gconnect passwd``'s default.
DEFAULT_BCRYPT_ROUNDS = 10
_SCHEMES = (
    ("$2y$", "bcrypt"),
    ("$2b$", "bcrypt"),
    ("$2a$", "bcrypt"),
    ("$apr1$", "apr1"),
    ("{SHA}", "sha1"),
    ("$5$", "sha256_crypt"),
    ("$6$", "sha512_crypt"),
)
WEAK_SCHEMES = ("apr1", "sha1", "sha256_crypt", "sha512_crypt")


class AuthFileError(ValueError):
    """The auth file cannot be used (unreadable, malformed, or refused entries)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One htpasswd line."""

    user: str
    #: bcrypt, apr1, sha1, sha256_crypt, sha512_crypt or plain
    scheme: str
    hashed: str


def detect_scheme(hashed: str) -> str:
    """The hash scheme of an htpasswd password field; "plain" if none matches."""
    for prefix, scheme in _SCHEMES:
        if hashed.startswith(prefix):
            return scheme
    return "plain"


def parse_htpasswd(text: str, *, allow_plaintext: bool = False, source: str = "auth file") -> dict[str, Entry]:
    """Parse htpasswd lines (``user:hash``; blank lines and ``#`` comments skipped).

    As in Apache's mod_authn_file the first line for a user wins. Raises
    AuthFileError naming the line for a malformed or refused entry.
    """
    table: dict[str, Entry] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        if not colon or not user or not hashed:
            raise AuthFileError(f"{source} line {number}: expected user:hash")
        scheme = detect_scheme(hashed)
        if scheme == "plain" and not allow_plaintext:
            raise AuthFileError(
                f"{source} line {number}: user {user!r} has a plaintext (or unknown) password; "
                "re-create it with 'gconnect passwd' or pass --allow-plaintext-passwords"
            )
        if user in table:
            log.warning("%s line %d: user %r repeated; the first entry is used", source, number, user)
            continue
        table[user] = Entry(user, scheme, hashed)
    return table


def load_htpasswd(path: str, *, allow_plaintext: bool = False) -> dict[str, Entry]:
    """Read and parse *path*; AuthFileError on any failure."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc}") from exc
    return parse_htpasswd(text, allow_plaintext=allow_plaintext, source=path)


def verify_password(entry: Entry, password: bytes) -> bool:
    """Check *password* against *entry* (slow: call it off the hub). Constant-time
    in the comparison: bcrypt and passlib compare digests with a constant-time
    equality, plaintext with :func:`hmac.compare_digest`."""
    try:
        if entry.scheme == "bcrypt":
            return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], entry.hashed.encode("ascii"))
        if entry.scheme == "plain":
            return hmac.compare_digest(password, entry.hashed.encode("utf-8"))
        from passlib import hash as passlib_hash  # only needed for the weak schemes

        handler = {
            "apr1": passlib_hash.apr_md5_crypt,
            "sha1": passlib_hash.ldap_sha1,
            "sha256_crypt": passlib_hash.sha256_crypt,
            "sha512_crypt": passlib_hash.sha512_crypt,
        }[entry.scheme]
        return bool(handler.verify(password, entry.hashed))
    except (ValueError, TypeError):
        # A corrupt hash in the file, or a password the scheme cannot take (NUL
        # bytes for crypt): a failed check, never a crash.
        return False
