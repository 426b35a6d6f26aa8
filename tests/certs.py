"""Certificates for the TLS tests, made with `cryptography`: a CA, a server and a client
certificate it issued, an expired server certificate from the same CA, and a second CA that
has nothing to do with the first. RSA keys: DCMTK's BCP 195 profiles offer ECDHE-RSA suites."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import TlsSettings

DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (PEM) every good certificate chains to
    server: Pair  # CN and SAN 127.0.0.1 / localhost
    client: Pair
    expired_server: Pair  # issued by `ca`, expired yesterday
    other_ca: Path  # an unrelated CA
    other_server: Pair  # issued by `other_ca`

    def client_tls(self, *, ca: Path | None = None, mutual: bool = False) -> TlsSettings:
        """What the agent would be configured with to reach a server of this PKI."""
        return TlsSettings(
            ca_file=ca or self.ca,
            cert_file=self.client.cert if mutual else None,
            key_file=self.client.key if mutual else None,
        )


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> Pair:
    pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return pair


def _ca(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    ca: tuple[x509.Certificate, rsa.RSAPrivateKey],
    *,
    server: bool,
    valid: tuple[datetime.datetime, datetime.datetime],
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    ca_cert, ca_key = ca
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """Write every certificate and key of the tests under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca, other = _ca("modality-agent test CA"), _ca("an unrelated CA")
    for stem, (cert, _) in (("ca", ca), ("other-ca", other)):
        (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    fresh, expired = (now - DAY, now + 30 * DAY), (now - 30 * DAY, now - DAY)

    def leaf(
        stem: str,
        issuer: tuple[x509.Certificate, rsa.RSAPrivateKey],
        server: bool,
        valid: tuple[datetime.datetime, datetime.datetime] = fresh,
    ) -> Pair:
        cert, key = _leaf(stem, issuer, server=server, valid=valid)
        return _write(directory, stem, cert, key)

    return Pki(
        ca=directory / "ca.crt",
        server=leaf("server", ca, True),
        client=leaf("client", ca, False),
        expired_server=leaf("expired-server", ca, True, expired),
        other_ca=directory / "other-ca.crt",
        other_server=leaf("other-server", other, True),
    )
