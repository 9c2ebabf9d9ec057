"""`receiver emulate` over TLS through real processes: the generated pair, a given pair, and bad flag mixes."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import ssl
import stat
from pathlib import Path

import httpx
from cryptography import x509

from tests.helpers.cli import run_cli
from tests.helpers.processes import RECEIVER, serve_env
from tests.helpers.tls import emulate_tls


async def test_tls_generates_a_pair_for_the_loopback_names_and_reuses_it(tmp_path: Path) -> None:
    """`--tls --tls-dir D` writes a self-signed certificate for localhost, 127.0.0.1 and ::1 with an owner-only
    key, prints the variables to export, serves https with it, and a second start reuses the same pair."""
    async with emulate_tls(tmp_path) as emulate:
        netloc = emulate.root.removeprefix("https://")
        assert f"export SSL_CERT_FILE={emulate.certfile} REQUESTS_CA_BUNDLE={emulate.certfile}" in emulate.printed
        assert f"export FAL_QUEUE_RUN_HOST={netloc}/fal FAL_RUN_HOST={netloc}/fal-run" in emulate.printed
        keyfile = emulate.certfile.parent / "emulator-key.pem"
        assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate(emulate.certfile.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["localhost"]
        assert set(names.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                                  ipaddress.ip_address("::1")}  # fmt: skip
        trusted = ssl.create_default_context(cafile=emulate.certfile)
        async with httpx.AsyncClient(verify=trusted) as client:
            assert (await client.get(f"{emulate.root}/healthz")).json()["status"] == "ok"
            port = netloc.rpartition(":")[2]
            assert (await client.get(f"https://localhost:{port}/healthz")).status_code == 200
        first = emulate.certfile.read_bytes()
    async with emulate_tls(tmp_path) as again:
        assert again.certfile.read_bytes() == first


async def test_a_given_pair_is_served(tmp_path: Path) -> None:
    """`--ssl-certfile F --ssl-keyfile K` serves https with that pair."""
    async with emulate_tls(tmp_path / "made"):
        pass
    made = tmp_path / "made" / "tls"
    process = await asyncio.create_subprocess_exec(
        *RECEIVER, "emulate", "--port", "0",
        "--ssl-certfile", str(made / "emulator-cert.pem"), "--ssl-keyfile", str(made / "emulator-key.pem"),
        env=serve_env(tmp_path), cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()  # a hang guard only
        root = line.split()[2].rstrip(":")
        assert root.startswith("https://127.0.0.1:"), line
        trusted = ssl.create_default_context(cafile=made / "emulator-cert.pem")
        async with httpx.AsyncClient(verify=trusted) as client:
            assert (await client.get(f"{root}/healthz")).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_bad_flag_mixes_are_refused(tmp_path: Path) -> None:
    """A certificate without its key, --tls with a given pair, or --tls-dir without --tls: exit 2, saying so."""
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    env = serve_env(tmp_path)
    alone = await run_cli("emulate", "--ssl-certfile", str(cert), env=env)
    assert alone.returncode == 2 and "together" in alone.stderr
    both = await run_cli("emulate", "--tls", "--ssl-certfile", str(cert), "--ssl-keyfile", str(cert), env=env)
    assert both.returncode == 2 and "not both" in both.stderr
    stray = await run_cli("emulate", "--tls-dir", str(tmp_path), env=env)
    assert stray.returncode == 2 and "--tls-dir goes with --tls" in stray.stderr
