"""The `receiver` command line: serve, emulate, demo, submit, jobs, migrate, purge."""

from __future__ import annotations

import ipaddress
import json
import os
import time
import uuid
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from receiver.cli.client import RETRY_STATUSES, ApiError, Client, image_reference, is_final
from receiver.cli.common import DEFAULT_URL, AsJson, ServerUrl, Token, api_client, console, err, log_style, run
from receiver.cli.emulate import emulate
from receiver.cli.jobs import jobs_app, show_job
from receiver.cli.notify import deliveries_app, subscriptions_app
from receiver.cli.roles import Role
from receiver.providers import image_field_of
from receiver.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Webhook-driven receiver for image-edit APIs.")
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


app.command()(emulate)


@app.command()
def demo(
    keep: Annotated[
        bool,
        typer.Option(
            "--keep", help="Keep serving the receiver and the emulators after the jobs, until Ctrl-C, to look at them."
        ),
    ] = False,
) -> None:
    """Start the emulator and the receiver on loopback, run edit jobs, and show how they went (on a SQLite file
    of their own, or on the PostgreSQL database RECEIVER_DATABASE_URL names); ends with the dashboard's URL."""
    from receiver.cli.demo import run_demo
    from receiver.web.asgi_server import setup_logging

    setup_logging("warning", log_format="%(levelname)s:%(name)s:%(message)s", style=log_style())
    url = os.environ.get("RECEIVER_DATABASE_URL", "")
    postgres = url if url.startswith(("postgresql://", "postgres://")) else None  # SQLite: a temporary file
    result = run(run_demo(console=console, database_url=postgres, keep=keep))
    if not result.ok:
        raise typer.Exit(1)


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
    _show(job, as_json, url)
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


def _show(job: dict[str, Any], as_json: bool, server: str) -> None:
    if as_json:
        console.print_json(json.dumps(job))
    else:
        show_job(job, server)


def main() -> None:
    app()
