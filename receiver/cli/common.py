"""What the CLI's command modules share: consoles, the server/token options, and the API client context."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Coroutine, Iterator
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from receiver.cli.client import ApiError, Client

console = Console()
err = Console(stderr=True)

ServerUrl = Annotated[str, typer.Option("--url", envvar="RECEIVER_URL", help="Base URL of a running receiver.")]
Token = Annotated[
    str | None, typer.Option("--token", envvar="RECEIVER_API_TOKEN", help="Bearer token.", show_default=False)
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DEFAULT_URL = "http://127.0.0.1:8000"


@contextlib.contextmanager
def api_client(url: str, token: str | None) -> Iterator[Client]:
    """A client of a running server; an API error ends the command with its message and exit code 1."""
    client = Client(url, token=token)
    try:
        yield client
    except ApiError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        client.close()


def log_style() -> Literal["text", "json"]:
    """`RECEIVER_LOG_FORMAT` for the commands that load no settings (`emulate`, `demo`)."""
    return "json" if os.environ.get("RECEIVER_LOG_FORMAT", "").strip().lower() == "json" else "text"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a command's coroutine to its end, on uvloop when it is installed."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:
        return asyncio.run(coro)
