"""`POST /v1/subscriptions/{id}/test` (receiver.notify.probe): one signed test message, sent now, nothing stored."""

from __future__ import annotations

import json
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.notify.signing import verify
from receiver.web.asgi_server import running_server
from tests.conftest import StackFactory


async def test_a_test_send_is_one_signed_message_and_records_nothing(make_stack: StackFactory) -> None:
    """A webhook subscription's test send is one `subscription.test` message signed with its secret; the answer
    says how the target replied, and no delivery is recorded."""
    stack = await make_stack(workers=False)
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    async with running_server(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        body = {"kind": "webhook", "url": f"{url}/hook"}
        created = (await stack.client.post("/v1/subscriptions", json=body)).json()
        answer = await stack.client.post(f"/v1/subscriptions/{created['id']}/test")
    assert answer.status_code == 200
    sent = answer.json()
    assert sorted(sent) == ["error", "latency_ms", "ok", "status_code"]
    assert (sent["ok"], sent["status_code"], sent["error"]) == (True, 204, None) and sent["latency_ms"] >= 0
    [(headers, raw)] = received
    verify(created["secret"], headers, raw, now=time.time())
    message = json.loads(raw)
    assert (message["type"], message["data"], message["schema_version"]) == ("subscription.test", {}, 1)
    assert headers["webhook-id"].startswith("msg_test_")
    assert (await stack.client.get("/v1/deliveries")).json()["deliveries"] == []


async def test_a_test_send_to_an_unknown_subscription_is_404(make_stack: StackFactory) -> None:
    """No such subscription: 404 in the one error shape."""
    stack = await make_stack(workers=False)
    answer = await stack.client.post("/v1/subscriptions/sub_NOPE/test")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
