"""HTTPS for the LAN: browsers open a microphone only in a secure context."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
from pathlib import Path

import ifaddr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

logger = logging.getLogger(__name__)


def local_addresses() -> list[str]:
    """This machine's IPv4 addresses, loopback first: the ones a LAN visitor might type."""
    found = {"127.0.0.1"}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.add(ip.ip)
    return sorted(found, key=lambda a: (a != "127.0.0.1", a))


def self_signed_certificate(state_dir: Path) -> tuple[Path, Path]:
    """A certificate for localhost, this host's name and its addresses; made once, then reused.

    Reusing it means a visitor accepts the browser's warning once, not after
    every restart. It is remade when the machine's addresses change.
    """
    cert_path, key_path = state_dir / "self-signed.crt", state_dir / "self-signed.key"
    names = ["localhost", socket.gethostname()]
    addresses = [*local_addresses(), "::1"]
    if cert_path.exists() and key_path.exists() and _covers(cert_path, names, addresses):
        return cert_path, key_path
    state_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Chatsubo (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName(n) for n in names] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in addresses
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    logger.info("generated a self-signed certificate in %s", cert_path)
    return cert_path, key_path


def _covers(cert_path: Path, names: list[str], addresses: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    expires = cert.not_valid_after_utc
    if expires < datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1):
        return False
    have_names = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return set(names) <= have_names and set(addresses) <= have_ips


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context for the given certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
