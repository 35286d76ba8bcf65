"""A throwaway certificate authority for tests and labs: etcd with TLS and client
certificates, as clusters run in production.

    ca = CertificateAuthority.create(folder, "pycnm-test-ca")
    server = ca.issue(folder, "etcd", ips=["127.0.0.1"])           # server and client use
    client = ca.issue(folder, "pycnm", client_only=True)
    client.cert, client.key, ca.cert                                  # PEM file paths

Keys are ECDSA P-256 (fast to make, accepted by etcd's Go TLS and gRPC's BoringSSL),
written with mode 0600; certificates are valid for a day from an hour ago (clock skew).
Nothing here is fit to protect anything real.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = datetime.timedelta(days=1)
BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: str
    key: str


def _write(path: Path, data: bytes, mode: int) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return str(path)


def _save(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
          ) -> KeyPair:
    folder.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return KeyPair(cert=_write(folder / f"{name}.pem", cert.public_bytes(
                       serialization.Encoding.PEM), 0o644),
                   key=_write(folder / f"{name}-key.pem", key_pem, 0o600))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class CertificateAuthority:
    name: str
    cert: str  # the CA certificate (what clients and servers trust), PEM path
    key: str
    _cert: x509.Certificate
    _key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, folder: str | Path, name: str) -> CertificateAuthority:
        """A self-signed CA ``name``, saved as ``folder/name.pem`` and ``name-key.pem``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        pair = _save(Path(folder), name, cert, key)
        return cls(name, pair.cert, pair.key, cert, key)

    def issue(self, folder: str | Path, name: str, ips: tuple[str, ...] | list[str] = (),
              dns: tuple[str, ...] | list[str] = (), client_only: bool = False) -> KeyPair:
        """A certificate for ``name`` signed by this CA, for TLS servers (with ``ips`` and
        ``dns`` as its subject alternative names) and clients, or clients only; the common
        name is ``name`` (etcd maps it to a user with --client-cert-auth and auth on)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if not client_only:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=False, key_cert_sign=False,
                crl_sign=False, content_commitment=False, data_encipherment=False,
                key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(d) for d in dns]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return _save(Path(folder), name, cert, key)
