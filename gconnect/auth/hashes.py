"""The older htpasswd hash formats, in standard-library code.

Only checking, never making: ``gconnect passwd`` writes bcrypt. A check
recomputes from the password and the stored salt (and rounds) the checksum that
the tool which wrote the hash computed, and compares the two in constant time:

* ``{SHA}``: base64 of the password's SHA-1, unsalted (``htpasswd -s``);
* apr1: Poul-Henning Kamp's MD5-crypt with the magic ``$apr1$``
  (``htpasswd -m``, its default; ``openssl passwd -apr1``);
* SHA-crypt: Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512"
  (``$5$``/``$6$``; ``htpasswd -2``/``-5``, ``openssl passwd -5``/``-6``, glibc
  crypt(3)), https://www.akkadia.org/drepper/SHA-crypt.txt, whose step numbers
  the comments below cite.

Python 3.13 removed the ``crypt`` module, so these are the algorithms written
out; the tests hold them to fixed vectors made by ``htpasswd`` and ``openssl
passwd``. Malformed hashes raise ValueError. Being Python, a check holds the
GIL (hashlib lets go of it only for inputs of 2 KiB and more): the thread pool
it runs in shares the hub's CPU, unlike bcrypt's. A default SHA-512-crypt check
(5,000 rounds) takes about 6 ms, apr1 about 1 ms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

#: The crypt(3) base-64 alphabet (not RFC 4648's: "./" first, digits, then letters).
_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ALPHABET = frozenset(_ITOA64)


def _indices(text: str) -> tuple[int, ...]:
    return tuple(int(word) for word in text.split())


#: The order in which each format emits its digest's bytes, three at a time
#: (MD5-crypt's ``to64`` calls; SHA-crypt step 22, e.g. ``b64_from_24bit(C[0],
#: C[10], C[20])``); a short last group is the low end of the 24-bit word.
_MD5_ORDER = _indices("0 6 12 1 7 13 2 8 14 3 9 15 4 10 5 11")
_SHA256_ORDER = _indices("0 10 20 21 1 11 12 22 2 3 13 23 24 4 14 15 25 5 6 16 26 27 7 17 18 28 8 9 19 29 31 30")
_SHA512_ORDER = _indices(
    "0 21 42 22 43 1 44 2 23 3 24 45 25 46 4 47 5 26 6 27 48 28 49 7 50 8 29 9 30 51 31 52 "
    "10 53 11 32 12 33 54 34 55 13 56 14 35 15 36 57 37 58 16 59 17 38 18 39 60 40 61 19 62 "
    "20 41 63"
)

#: MD5-crypt salts are at most 8 bytes, SHA-crypt's at most 16 (step 2 of the
#: spec); crypt(3) cuts longer ones.
MD5_CRYPT_MAX_SALT_BYTES = 8
SHA_CRYPT_MAX_SALT_BYTES = 16
#: SHA-crypt's rounds: 5,000 when not given, given ones clamped to 1,000 ...
#: 999,999,999 (the spec's ROUNDS_DEFAULT, ROUNDS_MIN, ROUNDS_MAX).
SHA_CRYPT_DEFAULT_ROUNDS = 5000
SHA_CRYPT_MIN_ROUNDS = 1000
SHA_CRYPT_MAX_ROUNDS = 999_999_999


def _crypt64(digest: bytes, order: tuple[int, ...]) -> str:
    permuted = bytes(digest[i] for i in order)
    out = []
    for start in range(0, len(permuted), 3):
        group = permuted[start : start + 3]
        word = int.from_bytes(group, "big")
        for _ in range(len(group) + 1):
            out.append(_ITOA64[word & 0x3F])
            word >>= 6
    return "".join(out)


def ldap_sha1(password: bytes) -> str:
    """``{SHA}`` + base64(SHA-1(password)), as ``htpasswd -s`` writes it."""
    return "{SHA}" + base64.b64encode(hashlib.sha1(password).digest()).decode("ascii")


def md5_crypt_checksum(password: bytes, salt: bytes, magic: bytes = b"$apr1$") -> str:
    """The 22 characters after the salt of MD5-crypt (FreeBSD's, by Poul-Henning
    Kamp); Apache's apr1 is it with the magic string ``$apr1$``."""
    salt = salt[:MD5_CRYPT_MAX_SALT_BYTES]
    alternate = hashlib.md5(password + salt + password).digest()
    ctx = hashlib.md5(password + magic + salt)
    for left in range(len(password), 0, -16):
        ctx.update(alternate[: min(16, left)])
    length = len(password)
    while length:
        # The bits of the length, lowest first: a NUL byte for a 1, the first
        # byte of the password for a 0.
        ctx.update(b"\0" if length & 1 else password[:1])
        length >>= 1
    digest = ctx.digest()
    for i in range(1000):
        ctx = hashlib.md5(password if i & 1 else digest)
        if i % 3:
            ctx.update(salt)
        if i % 7:
            ctx.update(password)
        ctx.update(digest if i & 1 else password)
        digest = ctx.digest()
    return _crypt64(digest, _MD5_ORDER)


def sha_crypt_checksum(password: bytes, salt: bytes, *, rounds: int, sha512: bool) -> str:
    """The checksum (after the last ``$``) of SHA-crypt, as glibc's crypt(3):
    43 characters for ``$5$`` (SHA-256), 86 for ``$6$`` (SHA-512)."""
    new = hashlib.sha512 if sha512 else hashlib.sha256
    size = new().digest_size
    salt = salt[:SHA_CRYPT_MAX_SALT_BYTES]
    # Steps 4-8: digest B of password, salt, password.
    alternate = new(password + salt + password).digest()
    # Steps 1-3 and 9-12: digest A.
    ctx = new(password + salt)
    for left in range(len(password), 0, -size):
        ctx.update(alternate[: min(size, left)])
    length = len(password)
    while length:
        # Step 11: the bits of the length, lowest first: B for a 1, the password for a 0.
        ctx.update(alternate if length & 1 else password)
        length >>= 1
    digest = ctx.digest()
    # Steps 13-16: P, the digest of the password repeated, stretched to the password's length.
    p_digest = new(password * len(password)).digest()
    p_bytes = (p_digest * (len(password) // size + 1))[: len(password)]
    # Steps 17-20: S, the digest of the salt repeated 16 + A[0] times, cut to the salt's length.
    s_digest = new(salt * (16 + digest[0])).digest()
    s_bytes = s_digest[: len(salt)]
    # Step 21: the rounds.
    for i in range(rounds):
        ctx = new(p_bytes if i & 1 else digest)
        if i % 3:
            ctx.update(s_bytes)
        if i % 7:
            ctx.update(p_bytes)
        ctx.update(digest if i & 1 else p_bytes)
        digest = ctx.digest()
    return _crypt64(digest, _SHA512_ORDER if sha512 else _SHA256_ORDER)


def parse_sha_crypt(hashed: str) -> tuple[bool, int, bytes, str]:
    """``$5$[rounds=N$]salt$checksum`` -> (SHA-512?, rounds, salt, checksum);
    ValueError if it is not of that form. Rounds outside the spec's range are
    clamped, as crypt(3) clamps them."""
    prefix, rest = hashed[:3], hashed[3:]
    if prefix not in ("$5$", "$6$"):
        raise ValueError("not a SHA-crypt hash")
    rounds = SHA_CRYPT_DEFAULT_ROUNDS
    if rest.startswith("rounds="):
        number, dollar, rest = rest[len("rounds=") :].partition("$")
        if not dollar or not (number.isascii() and number.isdigit()):
            raise ValueError("SHA-crypt rounds= is not a number")
        rounds = min(max(int(number), SHA_CRYPT_MIN_ROUNDS), SHA_CRYPT_MAX_ROUNDS)
    salt, dollar, checksum = rest.partition("$")
    salt_bytes = salt.encode("utf-8")
    if not dollar or len(salt_bytes) > SHA_CRYPT_MAX_SALT_BYTES:
        raise ValueError("SHA-crypt salt is malformed")
    if len(checksum) != (86 if prefix == "$6$" else 43) or not set(checksum) <= _ALPHABET:
        raise ValueError("SHA-crypt checksum is malformed")
    return prefix == "$6$", rounds, salt_bytes, checksum


def check_ldap_sha1(password: bytes, hashed: str) -> bool:
    """True if *hashed* is ``{SHA}`` of *password* (constant-time comparison)."""
    return hmac.compare_digest(ldap_sha1(password).encode("ascii"), hashed.encode("utf-8"))


def check_apr1(password: bytes, hashed: str) -> bool:
    """True if *hashed* (``$apr1$salt$checksum``) is *password*'s apr1 hash."""
    parts = hashed.split("$")
    if len(parts) != 4 or parts[:2] != ["", "apr1"]:
        raise ValueError("not an apr1 hash")
    salt_bytes, checksum = parts[2].encode("utf-8"), parts[3]
    if len(salt_bytes) > MD5_CRYPT_MAX_SALT_BYTES or len(checksum) != 22:
        raise ValueError("apr1 salt or checksum is malformed")
    return hmac.compare_digest(md5_crypt_checksum(password, salt_bytes).encode(), checksum.encode("utf-8"))


def check_sha_crypt(password: bytes, hashed: str) -> bool:
    """True if *hashed* (``$5$...`` or ``$6$...``) is *password*'s SHA-crypt hash."""
    sha512, rounds, salt, checksum = parse_sha_crypt(hashed)
    computed = sha_crypt_checksum(password, salt, rounds=rounds, sha512=sha512)
    return hmac.compare_digest(computed.encode("ascii"), checksum.encode("utf-8"))
