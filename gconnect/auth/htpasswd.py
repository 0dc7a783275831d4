"""htpasswd files: the formats Apache's ``htpasswd`` writes, parsed and checked.

* bcrypt (``htpasswd -B``, ``$2y$``/``$2b$``/``$2a$``), checked with ``bcrypt``;
* apr1-MD5 (``$apr1$``, htpasswd's default), SHA1 (``{SHA}``) and SHA-crypt
  (``$5$``/``$6$``, ``htpasswd -2``/``-5``), checked by :mod:`gconnect.auth.hashes`
  (standard-library code) and reported as weak;
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

from . import hashes

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
#: SHA-crypt entries with more rounds are refused at load. The largest found in
#: the wild are passlib's defaults (535,000 for $5$, 656,000 for $6$); a million
#: is about a second of pure-Python hashing, and crypt(3)'s own ceiling
#: (999,999,999) would hold a thread-pool thread for some twenty minutes per guess.
MAX_SHA_CRYPT_ROUNDS = 1_000_000
_CHECKS = {
    "apr1": hashes.check_apr1,
    "sha1": hashes.check_ldap_sha1,
    "sha256_crypt": hashes.check_sha_crypt,
    "sha512_crypt": hashes.check_sha_crypt,
}


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
        if scheme in ("sha256_crypt", "sha512_crypt"):
            _check_rounds(hashed, f"{source} line {number}: user {user!r}")
        if user in table:
            log.warning("%s line %d: user %r repeated; the first entry is used", source, number, user)
            continue
        table[user] = Entry(user, scheme, hashed)
    return table


def _check_rounds(hashed: str, where: str) -> None:
    try:
        rounds = hashes.parse_sha_crypt(hashed)[1]
    except ValueError:
        return  # malformed: never matches, as a corrupt bcrypt hash never does
    if rounds > MAX_SHA_CRYPT_ROUNDS:
        raise AuthFileError(
            f"{where} has a SHA-crypt hash of {rounds:,} rounds (at most {MAX_SHA_CRYPT_ROUNDS:,}); "
            "re-create it with 'gconnect passwd'"
        )


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
    in the comparison: bcrypt compares digests with a constant-time equality,
    the other formats with :func:`hmac.compare_digest`."""
    try:
        if entry.scheme == "bcrypt":
            return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], entry.hashed.encode("ascii"))
        if entry.scheme == "plain":
            return hmac.compare_digest(password, entry.hashed.encode("utf-8"))
        return _CHECKS[entry.scheme](password, entry.hashed)
    except (ValueError, TypeError):
        # A corrupt hash in the file (or a non-ASCII bcrypt one): a failed
        # check, never a crash.
        return False
