"""`receiver jobs`: list, show and watch jobs on a running server, with whole ids and URLs (they get copied)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from receiver.cli.common import DEFAULT_URL, AsJson, ServerUrl, Token, api_client, console, err

jobs_app = typer.Typer(help="List, inspect and watch jobs on a running server.", invoke_without_command=True)
LIST_COLUMNS = ("id", "provider", "model", "status", "created_at")
MIN_CELL = 6  # the narrowest a shrinking column of the jobs table gets before the list turns into records
IMAGES_PATH = "/v1/images/"


def is_terminal() -> bool:
    """A person reads stdout (rich's own test also says yes under FORCE_COLOR, which a pipe still is)."""
    return sys.stdout.isatty()


def print_line(text: str) -> None:
    """One line to stdout as is: no markup, no highlighting, no wrapping inserted (a long line stays one line)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True, emoji=False)


def local_url(url: str | None, server: str) -> str | None:
    """A `/v1/images/...` URL on the server this command talks to (the API builds it from RECEIVER_PUBLIC_URL,
    which may be a tunnel or proxy); other URLs as they are."""
    if not url or IMAGES_PATH not in url:
        return url
    return server.rstrip("/") + IMAGES_PATH + url.split(IMAGES_PATH, 1)[1]


@jobs_app.callback()
def jobs_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many jobs.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Page after this job id.")] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Follow the live feed (GET /v1/stream, resumed after a reconnect): one line per job change, until"
            " Ctrl-C. With --json: one event per line.",
        ),
    ] = False,
    url: ServerUrl = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List jobs, newest first (piped: tab-separated with a header line; ids and URLs are never cut)."""
    if ctx.invoked_subcommand is not None:
        return
    if watch:
        from receiver.cli.watch import watch_jobs

        raise typer.Exit(watch_jobs(url, token, as_json=as_json))
    with api_client(url, token) as client:
        page = client.list_jobs(status=status, limit=limit, cursor=cursor)
    if as_json:
        print_line(json.dumps(page, indent=2))
        return
    rows = [[str(job[column]) for column in LIST_COLUMNS] for job in page["jobs"]]
    if not is_terminal():
        for row in [list(LIST_COLUMNS), *rows]:
            sys.stdout.write("\t".join(row) + "\n")
        sys.stdout.flush()
    elif rows and console.width < table_min_width(rows):
        print_records(rows)
    else:
        print_table(rows)
    if page["next_cursor"]:
        (err if not is_terminal() else console).print(f"more: --cursor {page['next_cursor']}", soft_wrap=True)


def table_min_width(rows: list[list[str]]) -> int:
    """The narrowest terminal the table fits in with whole ids: the id column at its widest, the others at
    MIN_CELL, each with its padding."""
    id_width = max(len(row[0]) for row in rows)
    return id_width + 2 + (len(LIST_COLUMNS) - 1) * (MIN_CELL + 2)


def print_table(rows: list[list[str]]) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    widest_id = max((len(row[0]) for row in rows), default=2)
    table.add_column("id", no_wrap=True, min_width=widest_id)  # the other columns shrink (and fold) first
    for column in LIST_COLUMNS[1:]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_records(rows: list[list[str]]) -> None:
    """The list for a terminal too narrow for the table: each id whole on its own line, the rest below it."""
    for job_id, *rest in rows:
        print_line(job_id)
        print_line("  " + "  ".join(rest))


@jobs_app.command("show")
def jobs_show(job_id: str, url: ServerUrl = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Show one job: our stored copies of its images (URLs on this server), the provider's, and its deliveries."""
    with api_client(url, token) as client:
        job = client.get_job(job_id)
        deliveries = client.call("GET", "/v1/deliveries", params={"job_id": job_id, "limit": 100})["deliveries"]
    if as_json:
        print_line(json.dumps({**job, "deliveries": deliveries}, indent=2))
        return
    show_job(job, url)
    show_deliveries(deliveries)


def show_job(job: dict[str, Any], server: str) -> None:
    """A job as `key  value` lines, values whole: ids, our image URLs (on `server`), the provider's."""
    pairs: list[tuple[str, Any]] = [
        (key, job.get(key))
        for key in ("id", "provider", "model", "status", "provider_request_id", "created_at", "completed_at")
    ]
    if job.get("error"):
        pairs.append(("error", f"{job['error'].get('code')}: {job['error'].get('message')}"))
    pairs += [("images_status", job.get("images_status")), ("images_error", job.get("images_error"))]
    stored = job.get("images") or []
    for image in stored:
        size = f"{image.get('width')}x{image.get('height')} {image.get('content_type')} {image.get('bytes')} bytes"
        pairs.append(("image", f"{local_url(image.get('url'), server)}  {size}" if image.get("url") else "-"))
        if image.get("error"):
            pairs.append(("  error", image["error"]))
        pairs.append(("  provider_url", image.get("source_url")))
    if not stored:  # not copied (yet): only the provider's URLs, which expire
        for image in (job.get("result") or {}).get("images", []):
            pairs.append(("provider_image", f"{image.get('url')}  {image.get('width')}x{image.get('height')}"))
    source = job.get("input_image")
    if source and source.get("url"):
        pairs.append(("input_image", local_url(source["url"], server)))
    width = max(len(key) for key, _ in pairs) + 2
    for key, value in pairs:
        print_line(f"{key.ljust(width)}{'-' if value is None else value}")


def show_deliveries(deliveries: list[dict[str, Any]]) -> None:
    """One line per delivery: id, target, status, attempts, the last answer's code and error."""
    if not deliveries:
        print_line("deliveries     none")
        return
    print_line("deliveries")
    for delivery in deliveries:
        target = delivery.get("subscription_id") or f"callback {delivery.get('url')}"
        attempts = delivery.get("attempt_log") or []
        last_code = attempts[-1].get("status_code") if attempts else None
        fields = [
            delivery["id"],
            target,
            delivery["status"],
            f"attempts {delivery['attempts']}",
            f"last {last_code if last_code is not None else '-'}",
        ]
        if delivery.get("last_error"):
            fields.append(str(delivery["last_error"]))
        print_line("  " + "  ".join(fields))
