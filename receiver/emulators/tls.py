"""TLS for the emulators: a self-signed certificate for the loopback names, and a uvicorn server that uses it.

The official SDKs speak https to the hosts they build themselves (fal-client always does), so a developer who
points them at `receiver emulate --tls` trusts the generated certificate through `SSL_CERT_FILE` (httpx: fal-client,
openai) or `REQUESTS_CA_BUNDLE` (requests: wavespeed). The certificate is its own issuer (no CA to install).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.types import ASGIApp

LOOPBACK_NAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")
CERT_FILE = "emulator-cert.pem"
KEY_FILE = "emulator-key.pem"
VALID_DAYS = 30


@dataclass(frozen=True, slots=True)
class TlsFiles:
    certfile: Path
    keyfile: Path


def write_self_signed(directory: Path, *, now: datetime.datetime | None = None) -> TlsFiles:
    """Write a fresh self-signed certificate for `localhost`, `127.0.0.1` and `::1` (their subject alternative
    names) and its private key into `directory` (created owner-only if missing); the key file is 0600."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver emulators (localhost)")])
    sans: list[x509.GeneralName] = [x509.DNSName(host) for host in LOOPBACK_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(address)) for address in LOOPBACK_ADDRESSES]
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory / CERT_FILE, directory / KEY_FILE)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files.keyfile.unlink(missing_ok=True)  # so the mode below is the new file's, whatever was there
    fd = os.open(files.keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    files.certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def tls_server(
    app: ASGIApp, files: TlsFiles, *, log_level: str = "warning", access_log: bool = False
) -> uvicorn.Server:
    """A uvicorn server for `app` that speaks https with `files` (serve it on a bound socket)."""
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=5,
        server_header=False,
        ssl_certfile=str(files.certfile),
        ssl_keyfile=str(files.keyfile),
    )
    return uvicorn.Server(config)
