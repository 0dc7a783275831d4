"""Client certificates for the tests, made with trustme and cryptography: a
valid one (CN svc-a, OU staff), one the CRL revokes, an expired one, and one
from an unknown CA; the CA bundle and the CRL as files."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization


def write_leaf(leaf: trustme.LeafCert, path) -> tuple[str, str]:
    cert, key = path.with_suffix(".pem"), path.with_suffix(".key")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def make_client_certs(client_ca: trustme.CA, tmp_path: Path) -> dict[str, Any]:
    """The client CA bundle and CRL (``ca``, ``crl``: paths) and certificates
    (``valid``, ``revoked``, ``expired``, ``unknown``: (cert, key) paths), in *tmp_path*."""
    now = datetime.datetime.now(datetime.timezone.utc)
    made = {
        "valid": client_ca.issue_cert("svc-a.test", common_name="svc-a", organization_unit_name="staff"),
        "revoked": client_ca.issue_cert("svc-r.test", common_name="svc-r"),
        "expired": client_ca.issue_cert(
            "svc-e.test",
            common_name="svc-e",
            not_before=now - datetime.timedelta(days=10),
            not_after=now - datetime.timedelta(days=1),
        ),
        "unknown": trustme.CA().issue_cert("svc-u.test", common_name="svc-u"),
    }
    paths = {name: write_leaf(leaf, tmp_path / name) for name, leaf in made.items()}
    ca_path = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_path))
    ca_key = serialization.load_pem_private_key(client_ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(client_ca.cert_pem.bytes())
    revoked_serial = x509.load_pem_x509_certificate(made["revoked"].cert_chain_pems[0].bytes()).serial_number
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(revoked_serial).revocation_date(now).build()
        )
        .sign(ca_key, hashes.SHA256())
    )
    crl_path = tmp_path / "client-ca.crl"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return {"ca": str(ca_path), "crl": str(crl_path), **paths}
