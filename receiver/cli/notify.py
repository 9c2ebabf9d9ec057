"""The CLI's `subscriptions` and `deliveries` commands (registered on the main `receiver` app)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from receiver.cli.common import DEFAULT_URL, AsJson, ServerUrl, Token, api_client, console, err

subscriptions_app = typer.Typer(help="Manage notification subscriptions on a running server.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Inspect, retry and replay notification deliveries.", no_args_is_help=True)
EVENTS = "job.succeeded,job.failed,job.cancelled"


def _print(data: Any, as_json: bool, table: Table) -> None:
    if as_json:
        console.print_json(json.dumps(data))
    else:
        console.print(table)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


@subscriptions_app.command("add")
def subscriptions_add(
    kind: Annotated[str, typer.Argument(help="webhook, slack, discord or telegram")],
    target: Annotated[
        str | None, typer.Option("--target", help="Target URL (webhook, Slack or Discord webhook URL).")
    ] = None,
    events: Annotated[str, typer.Option(help="Comma-separated event types.")] = EVENTS,
    provider: Annotated[str | None, typer.Option(help="Only jobs of this provider.")] = None,
    model: Annotated[str | None, typer.Option(help="Only jobs of this model.")] = None,
    metadata: Annotated[list[str], typer.Option("--metadata", help="Only jobs with this metadata key=value.")] = [],  # noqa: B006
    bot_token: Annotated[str | None, typer.Option(help="Telegram bot token.")] = None,
    chat_id: Annotated[str | None, typer.Option(help="Telegram chat id.")] = None,
    server: ServerUrl = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Add a subscription; a webhook's signing secret is printed once, keep it."""
    wanted: dict[str, str] = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"[red]error:[/] --metadata {item!r} must look like key=value")
            raise typer.Exit(2)
        wanted[key] = value
    body: dict[str, Any] = {
        "kind": kind,
        "events": [e.strip() for e in events.split(",") if e.strip()],
        "filter": {"provider": provider, "model": model, "metadata": wanted},
    }
    for name, given in (("url", target), ("bot_token", bot_token), ("chat_id", chat_id)):
        if given is not None:
            body[name] = given
    with api_client(server, token) as client:
        created = client.call("POST", "/v1/subscriptions", json=body)
    table = Table(show_header=False)
    for key in ("id", "kind", "url", "events", "status"):
        table.add_row(key, str(created.get(key)))
    if created.get("secret"):
        table.add_row("secret", created["secret"])
    _print(created, as_json, table)
    if created.get("secret") and not as_json:
        console.print("[yellow]The secret is shown only now: store it to verify our signatures.[/]")


@subscriptions_app.command("list")
def subscriptions_list(server: ServerUrl = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """List subscriptions (disabled ones with the reason)."""
    with api_client(server, token) as client:
        data = client.call("GET", "/v1/subscriptions")
    table = Table()
    for column in ("id", "kind", "target", "events", "status"):
        table.add_column(column)
    for sub in data["subscriptions"]:
        status = sub["status"] + (f" ({sub['disabled_reason']})" if sub["disabled_reason"] else "")
        table.add_row(sub["id"], sub["kind"], sub["url"] or f"chat {sub['chat_id']}", ",".join(sub["events"]), status)
    _print(data, as_json, table)


@subscriptions_app.command("rm")
def subscriptions_rm(sub_id: str, server: ServerUrl = DEFAULT_URL, token: Token = None) -> None:
    """Remove (disable) a subscription; its delivery history stays."""
    with api_client(server, token) as client:
        client.call("DELETE", f"/v1/subscriptions/{sub_id}")
    console.print(f"removed {sub_id}")


@subscriptions_app.command("test")
def subscriptions_test(sub_id: str, server: ServerUrl = DEFAULT_URL, token: Token = None) -> None:
    """Send a test notification now and show how the target answered (exit 1 if it failed)."""
    with api_client(server, token) as client:
        result = client.call("POST", f"/v1/subscriptions/{sub_id}/test")
    console.print(
        f"status {result['status_code']}, {result['latency_ms']} ms"
        + (f", {result['error']}" if result["error"] else "")
    )
    if not result["ok"]:
        raise typer.Exit(1)


@subscriptions_app.command("rotate-secret")
def subscriptions_rotate(sub_id: str, server: ServerUrl = DEFAULT_URL, token: Token = None) -> None:
    """Give a webhook subscription a new secret; the old one keeps signing during the grace period."""
    with api_client(server, token) as client:
        result = client.call("POST", f"/v1/subscriptions/{sub_id}/rotate-secret")
    console.print(f"new secret: {result['secret']}")


@deliveries_app.command("list")
def deliveries_list(
    status: Annotated[str | None, typer.Option(help="pending, delivered, failed or dead")] = None,
    job_id: Annotated[str | None, typer.Option("--job", help="Only this job's deliveries.")] = None,
    subscription_id: Annotated[str | None, typer.Option("--subscription", help="Only this subscription's.")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 50,
    server: ServerUrl = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List deliveries with their last error."""
    params = {"status": status, "job_id": job_id, "subscription_id": subscription_id, "limit": limit}
    with api_client(server, token) as client:
        data = client.call("GET", "/v1/deliveries", params={k: v for k, v in params.items() if v is not None})
    table = Table()
    for column in ("id", "target", "status", "attempts", "last error", "created"):
        table.add_column(column)
    for d in data["deliveries"]:
        target = d["subscription_id"] or f"callback {d['url']}"
        table.add_row(d["id"], target, d["status"], str(d["attempts"]), d["last_error"] or "", _when(d["created_at"]))
    _print(data, as_json, table)


@deliveries_app.command("retry")
def deliveries_retry(delivery_id: str, server: ServerUrl = DEFAULT_URL, token: Token = None) -> None:
    """Send one delivery again (same webhook-id)."""
    with api_client(server, token) as client:
        result = client.call("POST", f"/v1/deliveries/{delivery_id}/retry")
    console.print(f"requeued {result['requeued']}")


@deliveries_app.command("replay")
def deliveries_replay(
    subscription_id: Annotated[
        str | None, typer.Option("--subscription", help="Deliveries of this subscription.")
    ] = None,
    job_id: Annotated[str | None, typer.Option("--job", help="Deliveries of this job.")] = None,
    status: Annotated[str | None, typer.Option(help="Only deliveries in this status (e.g. dead).")] = None,
    since: Annotated[float | None, typer.Option(help="Created at or after (Unix seconds).")] = None,
    until: Annotated[float | None, typer.Option(help="Created before (Unix seconds).")] = None,
    server: ServerUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Replay many deliveries at once (same webhook-ids, so receivers can dedupe)."""
    body = {"subscription_id": subscription_id, "job_id": job_id, "status": status, "since": since, "until": until}
    with api_client(server, token) as client:
        result = client.call("POST", "/v1/deliveries/replay", json={k: v for k, v in body.items() if v is not None})
    console.print(f"requeued {result['requeued']}")
