"""The `receiver` command line: serve, emulate, demo, submit, jobs, migrate, purge."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
import uuid
from collections.abc import Coroutine
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from receiver.cli.client import RETRY_STATUSES, ApiError, Client, image_reference, is_final
from receiver.cli.common import DEFAULT_URL, AsJson, ServerUrl, Token, api_client, console, err
from receiver.cli.notify import deliveries_app, subscriptions_app
from receiver.cli.roles import Role
from receiver.providers import image_field_of
from receiver.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Webhook-driven receiver for image-edit APIs.")
jobs_app = typer.Typer(help="List and inspect jobs on a running server.", invoke_without_command=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(subscriptions_app, name="subscriptions")
app.add_typer(deliveries_app, name="deliveries")


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            name = "RECEIVER_" + str(error["loc"][0]).upper() if error["loc"] else "settings"
            err.print(f"[red]error:[/] {name}: {error['msg']}")
        raise typer.Exit(2) from None


def log_style() -> Literal["text", "json"]:
    """`RECEIVER_LOG_FORMAT` for the commands that load no settings (`emulate`, `demo`)."""
    return "json" if os.environ.get("RECEIVER_LOG_FORMAT", "").strip().lower() == "json" else "text"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:
        return asyncio.run(coro)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    role: Annotated[
        Role,
        typer.Option(
            help="web: HTTP only; worker: task runner, reconciler and retention, no port; all: web plus a"
            " worker child process."
        ),
    ] = Role.ALL,
    reuse_port: Annotated[
        bool, typer.Option(help="Set SO_REUSEPORT: several web processes on this machine share the port.")
    ] = False,
    parent_pid: Annotated[int | None, typer.Option(hidden=True, help="Set by --role all on its worker.")] = None,
    ready_fd: Annotated[int | None, typer.Option(hidden=True, help="Set by --role all on its worker.")] = None,
) -> None:
    """Run the service: the web app, the worker (task runner, reconciler, retention), or both."""
    settings = load_settings()
    if role is not Role.WORKER and not is_loopback(host) and settings.api_token is None:
        err.print(f"[red]error:[/] refusing to bind {host}: set RECEIVER_API_TOKEN to serve beyond loopback")
        raise typer.Exit(2)
    from receiver.web.asgi_server import setup_logging

    setup_logging(settings.log_level, style=settings.log_format)
    from receiver.cli.serve import serve_forever

    try:
        child = {"parent_pid": parent_pid, "ready_fd": ready_fd}  # only --role all sets them, on its worker
        run(serve_forever(settings, host=host, port=port, role=role, reuse_port=reuse_port, **child))
    except OSError as exc:
        err.print(f"[red]error:[/] cannot serve on {host}:{port}: {exc}")
        raise typer.Exit(1) from None


@app.command()
def emulate(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 9000,
) -> None:
    """Run the provider emulators alone (fal under /fal)."""
    from receiver.emulators import create_emulator_app
    from receiver.web.asgi_server import bind_socket, make_server, setup_logging

    style = log_style()
    setup_logging("info", style=style)
    sock = bind_socket(host, port)
    where = f"fal emulator on http://{host}:{sock.getsockname()[1]}/fal"
    if style == "json":  # a JSON log reader gets JSON lines only
        logging.getLogger("receiver.emulators").info("%s", where)
    else:
        console.print(where)
    server = make_server(create_emulator_app(), log_level="info", access_log=True)
    run(server.serve(sockets=[sock]))


@app.command()
def demo() -> None:
    """Start the emulator and the receiver on loopback, run edit jobs, and show how they went (on a SQLite file
    of their own, or on the PostgreSQL database RECEIVER_DATABASE_URL names)."""
    from receiver.cli.demo import run_demo
    from receiver.web.asgi_server import setup_logging

    setup_logging("warning", log_format="%(levelname)s:%(name)s:%(message)s", style=log_style())
    url = os.environ.get("RECEIVER_DATABASE_URL", "")
    postgres = url if url.startswith(("postgresql://", "postgres://")) else None  # SQLite: a temporary file
    result = run(run_demo(console=console, database_url=postgres))
    if not result.ok:
        err.print("[red]demo failed:[/] not every job succeeded")
        raise typer.Exit(1)
    console.print("[green]every demo job succeeded[/]")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from receiver.storage.backends import migrate as migrate_database
    from receiver.storage.base import StorageError

    settings = load_settings()
    try:
        applied = migrate_database(settings.database_url)
    except StorageError as exc:
        err.print(f"[red]error:[/] migration failed: {exc}")
        raise typer.Exit(1) from None
    console.print(f"applied {applied}" if applied else "schema is up to date")


@app.command()
def purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted.")] = False,
    as_json: AsJson = False,
) -> None:
    """Delete what is past retention now (RECEIVER_RETENTION_DAYS, RECEIVER_JOB_RETENTION_DAYS).

    Safe beside a running server: small batches. --dry-run opens the database read-only (never migrates).
    Exit 0 done, 1 database missing, unreadable, not writable or (dry run) its schema behind, 2 bad settings."""
    from receiver.jobs.retention import PurgeError
    from receiver.jobs.retention import purge as run_purge

    settings = load_settings()
    try:
        report = run(run_purge(settings, dry_run=dry_run))
    except PurgeError as exc:
        err.print(f"[red]error:[/] purge failed: {escape(str(exc))}")
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
        return
    table = Table(title="would delete (dry run)" if dry_run else "deleted")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in report.as_dict()["rows"].items():
        table.add_row(name, str(count))
    table.add_row("blob files", str(report.blobs))
    console.print(table)


def _params(values: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            err.print(f"[red]error:[/] --param {item!r} must look like key=value")
            raise typer.Exit(2)
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


@app.command()
def submit(
    provider: Annotated[str, typer.Option(help="Provider name, e.g. fal.")],
    model: Annotated[str, typer.Option(help="Model id, e.g. fal-ai/stepx-edit2.")],
    image: Annotated[str, typer.Option(help="Input image: URL, data URI or local file.")],
    prompt: Annotated[str, typer.Option(help="The edit instruction.")],
    param: Annotated[list[str], typer.Option("--param", help="Extra input field key=value (JSON values).")] = [],  # noqa: B006
    wait: Annotated[bool, typer.Option(help="Wait until the job is final.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Idempotency-Key to send (default: a fresh UUID); the same key never makes a second job."),
    ] = None,
    url: ServerUrl = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Submit an edit job to a running server (retried safely under one idempotency key)."""
    with api_client(url, token) as client:
        job_input = {image_field_of(provider): image_reference(image), "prompt": prompt, **_params(param)}
        body = {"provider": provider, "model": model, "input": job_input}
        job = _create_once(client, body, idempotency_key or str(uuid.uuid4()))
        if wait:
            deadline = time.monotonic() + timeout
            with console.status(f"{job['id']}: {job['status']}") as status:
                while not is_final(job) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    job = client.get_job(job["id"])
                    status.update(f"{job['id']}: {job['status']}")
    _show(job, as_json)
    if wait and job["status"] != "succeeded":
        raise typer.Exit(1)


def _create_once(client: Client, body: dict[str, Any], key: str) -> dict[str, Any]:
    """Create the job under `key`; when the outcome stays unknown, say how to retry without a second job."""
    try:
        return client.create_job(body, idempotency_key=key)
    except ApiError as exc:
        if exc.status_code == 0 or exc.status_code in RETRY_STATUSES:
            hint = f"the job may or may not exist: run again with --idempotency-key {key} to find out safely"
            err.print(hint, soft_wrap=True)  # unwrapped, so the key can be copied
        raise


def _show(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(job))
        return
    table = Table(show_header=False)
    for key in ("id", "provider", "model", "status", "provider_request_id", "created_at", "completed_at"):
        table.add_row(key, str(job.get(key)))
    if job.get("error"):
        table.add_row("error", f"{job['error'].get('code')}: {job['error'].get('message')}")
    for image in (job.get("result") or {}).get("images", []):
        table.add_row("image", f"{image.get('width')}x{image.get('height')} {image.get('url', '')[:100]}")
    console.print(table)


@jobs_app.callback()
def jobs_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many jobs.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Page after this job id.")] = None,
    url: ServerUrl = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    with api_client(url, token) as client:
        page = client.list_jobs(status=status, limit=limit, cursor=cursor)
    if as_json:
        console.print_json(json.dumps(page))
        return
    table = Table()
    for column in ("id", "provider", "model", "status", "created_at"):
        table.add_column(column)
    for job in page["jobs"]:
        table.add_row(job["id"], job["provider"], job["model"], job["status"], job["created_at"])
    console.print(table)
    if page["next_cursor"]:
        console.print(f"more: --cursor {page['next_cursor']}")


@jobs_app.command("show")
def jobs_show(job_id: str, url: ServerUrl = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Show one job."""
    with api_client(url, token) as client:
        job = client.get_job(job_id)
    _show(job, as_json)


def main() -> None:
    app()
