"""A certificate authority and server certificates made in the test (cryptography), written as PEM files:
what a managed Kafka or a ClickHouse server behind TLS presents, without any key kept in the repository."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServerTls:
    ca: Path  # the CA certificate clients trust
    certificate: Path  # the server's certificate chain (leaf, then CA)
    key: Path  # the server's private key, PKCS#8, unencrypted
    keystore: Path  # key and chain in one PEM file (Kafka's ssl.keystore.type=PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_server_tls(directory: Path, host: str = "127.0.0.1", label: str = "sendflowr-test") -> ServerTls:
    """A fresh CA and a certificate it signed for `host` (IP or DNS name, plus localhost)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name(f"{label} CA")).issuer_name(_name(f"{label} CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .sign(ca_key, hashes.SHA256()))
    try:
        names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(host))]
    except ValueError:
        names = [x509.DNSName(host)]
    names.append(x509.DNSName("localhost"))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    chain_pem = cert.public_bytes(pem) + ca_pem
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tls = ServerTls(directory / "ca.pem", directory / "server-chain.pem", directory / "server-key.pem",
                    directory / "server-keystore.pem")
    tls.ca.write_bytes(ca_pem)
    tls.certificate.write_bytes(chain_pem)
    tls.key.write_bytes(key_pem)
    tls.keystore.write_bytes(key_pem + chain_pem)
    for path in (tls.key, tls.keystore):
        path.chmod(0o600)
    return tls
