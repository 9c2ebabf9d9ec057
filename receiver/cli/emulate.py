"""`receiver emulate`: the provider emulators on one port, over plain http or TLS (given or generated pair)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from receiver.cli.common import console, err, log_style, run

if TYPE_CHECKING:
    from receiver.emulators.tls import TlsFiles

CertFile = Annotated[
    Path | None,
    typer.Option(help="Serve https with this PEM certificate (with --ssl-keyfile).", dir_okay=False, exists=True),
]
KeyFile = Annotated[
    Path | None,
    typer.Option(help="The private key of --ssl-certfile (PEM).", dir_okay=False, exists=True),
]
Tls = Annotated[
    bool,
    typer.Option(
        "--tls",
        help="Serve https with a self-signed certificate for localhost, 127.0.0.1 and ::1, generated now (or"
        " reused from --tls-dir); prints the file to trust through SSL_CERT_FILE / REQUESTS_CA_BUNDLE.",
    ),
]
TlsDir = Annotated[
    Path | None,
    typer.Option(
        help="Where --tls keeps its pair (reused while valid, so SSL_CERT_FILE stays right across restarts);"
        " default: a new temporary directory.",
        file_okay=False,
    ),
]
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104 (names, not a bind)


def emulate(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 9000,
    ssl_certfile: CertFile = None,
    ssl_keyfile: KeyFile = None,
    tls: Tls = False,
    tls_dir: TlsDir = None,
) -> None:
    """Run the provider emulators alone (/fal, /fal-run, /wavespeed, /stepfun, /modelverse), over http, or https
    with --ssl-certfile/--ssl-keyfile or --tls, so the providers' own SDKs can reach them."""
    from receiver.emulators import create_emulator_app
    from receiver.emulators.tls import TlsFiles, tls_server
    from receiver.web.asgi_server import base_url, bind_socket, make_server, setup_logging

    if (ssl_certfile is None) != (ssl_keyfile is None):
        err.print("[red]error:[/] give --ssl-certfile and --ssl-keyfile together")
        raise typer.Exit(2)
    if tls and ssl_certfile is not None:
        err.print("[red]error:[/] --tls generates its own pair: give it or --ssl-certfile/--ssl-keyfile, not both")
        raise typer.Exit(2)
    if tls_dir is not None and not tls:
        err.print("[red]error:[/] --tls-dir goes with --tls")
        raise typer.Exit(2)
    files = None
    if tls:
        files = tls_pair(tls_dir or Path(tempfile.mkdtemp(prefix="receiver-emulate-tls-")))
    elif ssl_certfile is not None and ssl_keyfile is not None:
        files = TlsFiles(ssl_certfile, ssl_keyfile)

    style = log_style()
    setup_logging("info", style=style)
    sock = bind_socket(host, port)
    shown_host = "127.0.0.1" if host in WILDCARD_HOSTS else host
    root = base_url(shown_host, sock.getsockname()[1])
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops, whenever it comes: exit 0
        if files is None:
            where = f"emulators on {root}: /fal /fal-run /wavespeed /stepfun /modelverse"
            if style == "json":  # a JSON log reader gets JSON lines only
                logging.getLogger("receiver.emulators").info("%s", where)
            else:
                console.print(where, soft_wrap=True)
                console.file.flush()
            server = make_server(create_emulator_app(), log_level="info", access_log=True)
        else:
            root = root.replace("http://", "https://", 1)
            print_tls_hints(root, files)
            server = tls_server(create_emulator_app(), files, log_level="info", access_log=True)
        run(server.serve(sockets=[sock]))


def tls_pair(directory: Path) -> TlsFiles:
    """The pair kept in `directory` while its certificate is valid for another day, else a new one."""
    from cryptography import x509

    from receiver.emulators.tls import CERT_FILE, KEY_FILE, TlsFiles, write_self_signed

    files = TlsFiles(directory / CERT_FILE, directory / KEY_FILE)
    if files.certfile.is_file() and files.keyfile.is_file():
        cert = x509.load_pem_x509_certificate(files.certfile.read_bytes())
        tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        if cert.not_valid_after_utc > tomorrow:
            return files
    return write_self_signed(directory)


def print_tls_hints(root: str, files: TlsFiles) -> None:
    """Where the emulators are, the certificate to trust, and the environment the SDKs read."""
    netloc = root.removeprefix("https://")
    lines = [
        f"emulators on {root}: /fal /fal-run /wavespeed /stepfun /modelverse",
        f"certificate {files.certfile} (key {files.keyfile})",
        "trust it, and point the SDKs here (README: Develop against the emulators with the official SDKs):",
        f"  export SSL_CERT_FILE={files.certfile} REQUESTS_CA_BUNDLE={files.certfile}",
        f"  export FAL_QUEUE_RUN_HOST={netloc}/fal FAL_RUN_HOST={netloc}/fal-run",
        f"  wavespeed.Client(base_url='{root}/wavespeed')",
        f"  openai.OpenAI(base_url='{root}/stepfun/v1')  # or '{root}/modelverse/v1'",
    ]
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    console.file.flush()  # read at once by whoever started us with a pipe
