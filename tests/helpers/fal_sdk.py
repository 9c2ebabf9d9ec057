"""fal-client as a user runs it, in a process of its own: `python -m tests.helpers.fal_sdk SCENARIO ARGS_JSON`.

fal-client reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST when it is imported and always speaks https to them, so the
tests start this program with those variables (and SSL_CERT_FILE, FAL_KEY) pointing at the emulator over TLS,
exactly as the README tells a developer to, and read one JSON object back from its stdout: what the scenario
saw, or the SDK's error.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

STEPX = "fal-ai/stepx-edit2"
SDXL = "fal-ai/fast-sdxl/image-to-image"
POLL_S = 0.01


def status_view(status: Any) -> dict[str, Any]:
    view: dict[str, Any] = {"type": type(status).__name__}
    for name in ("error", "error_type", "metrics", "logs", "position"):
        if hasattr(status, name):
            view[name] = getattr(status, name)
    return view


async def submit_status_result(client: Any, args: dict[str, Any]) -> dict[str, Any]:
    handle = await client.submit(STEPX, args["arguments"])
    first = await handle.status(with_logs=True)
    result = await handle.get(interval=POLL_S)
    status = await client.status(STEPX, handle.request_id, with_logs=True)
    again = await client.result(STEPX, handle.request_id)
    return {
        "request_id": handle.request_id,
        "status_url": handle.status_url,
        "first": status_view(first),
        "result": result,
        "status": status_view(status),
        "result_again": again,
    }


async def subscribe(client: Any, args: dict[str, Any]) -> dict[str, Any]:
    updates: list[Any] = []
    result = await client.subscribe(SDXL, args["arguments"], interval=POLL_S, on_queue_update=updates.append)
    return {"updates": [status_view(update) for update in updates], "result": result}


async def run(client: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"result": await client.run(STEPX, args["arguments"])}


async def get(client: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"result": await (await client.submit(STEPX, args["arguments"])).get(interval=POLL_S)}


async def submit(client: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": (await client.submit(STEPX, args["arguments"])).request_id}


async def cancel(client: Any, args: dict[str, Any]) -> dict[str, Any]:
    handle = await client.submit(STEPX, args["arguments"])
    await handle.cancel()
    return {"status": status_view(await handle.status())}


SCENARIOS: dict[str, Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "submit_status_result": submit_status_result,
    "subscribe": subscribe,
    "run": run,
    "get": get,
    "submit": submit,
    "cancel": cancel,
}


async def main(scenario: str, args: dict[str, Any]) -> dict[str, Any]:
    import fal_client  # here: the variables it reads at import are the ones this process was started with
    import fal_client.client

    client = fal_client.AsyncClient()  # FAL_KEY from the environment, as a user's code has it
    try:
        return await SCENARIOS[scenario](client, args)
    except fal_client.client.FalClientHTTPError as exc:
        return {"error": {"status_code": exc.status_code, "message": exc.message, "error_type": exc.error_type}}
    finally:
        if "_client" in client.__dict__:  # the SDK has no close(); close the httpx client it made
            await (await client._client).aclose()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))))
