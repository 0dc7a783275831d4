"""Client certificates over HTTP/2: every stream of a connection carries the
identity its certificate gave (Python's ssl and the h2 package as the client)."""

from __future__ import annotations

import ssl

import pytest
import trustme

from ..clientcerts import make_client_certs
from ..h2client import H2Client

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(client_ca, tmp_path):
    return make_client_certs(client_ca, tmp_path)


def test_every_http2_stream_carries_the_connections_certificate(start_tls_proxy, certs, ca, echo):
    proxy = start_tls_proxy("--tls-client-ca", certs["ca"], "--tls-client-identity", "ou")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.load_cert_chain(*certs["valid"])
    client = H2Client((proxy.host, proxy.port), context)
    try:
        streams = [client.connect(echo.target) for _ in range(3)]
        client.wait(lambda: all(s in client.responses for s in streams))
        assert [client.status(s) for s in streams] == [200, 200, 200]
    finally:
        client.close()
    lines = [proxy.wait_access(f"stream={s}") for s in streams]
    assert all("user=staff " in line and " auth=cert" in line for line in lines), lines
