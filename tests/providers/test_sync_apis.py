"""What StepFun and Modelverse, the synchronous image APIs, do alike by design, against their emulators over
real HTTP: their facts, a missing or wrong key, and calls that fail before or after they were sent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from receiver.errors import AmbiguousError, GiveUpError, RetryLaterError
from receiver.images.download import FetchPolicy
from tests.helpers.servers import refusing_url, silent_server
from tests.helpers.sync_apis import MODELVERSE, STEPFUN, Harness, Served, SyncApi, on_shared_loop, serving

APIS = [pytest.param(STEPFUN, id="stepfun"), pytest.param(MODELVERSE, id="modelverse")]
WRONG_KEY_CODES = {"stepfun": "invalid_api_key", "modelverse": "auth_error"}
STATUS_WORDS = {  # how the message names an injected status: StepFun by number, Modelverse with its code too
    "stepfun": {408: "408", 500: "500", 504: "504"},
    "modelverse": {408: "408 timeout", 500: "500 internal_error", 504: "504 gateway_timeout_error"},
}


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=APIS)
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    async with serving(request.param) as served:
        yield served


@pytest.mark.parametrize(
    ("api", "models"),
    [
        pytest.param(STEPFUN, ("step-image-edit-2",), id="stepfun"),
        pytest.param(MODELVERSE, ("stepfun-ai/step1x-edit",), id="modelverse"),
    ],
)
def test_class_and_instance_facts(api: SyncApi, models: tuple[str, ...]) -> None:
    """Synchronous, so no webhooks; name, models and limits as configured; configured only with a key."""
    provider = api.provider(
        httpx.AsyncClient(),
        base_url=f"https://api.{api.name}.example/",
        key=SecretStr(api.key),
        timeout_s=180,
        fetch_policy=FetchPolicy(),
        concurrency=4,
        rate_per_min=30,
    )
    assert (provider.name, provider.models) == (api.name, models)
    assert (provider.synchronous, provider.webhooks, provider.concurrency, provider.rate_per_min) == (
        True,
        False,
        4,
        30,
    )
    assert provider.base_url == f"https://api.{api.name}.example"
    assert provider.is_configured()
    assert not api.offline_provider().is_configured()


@on_shared_loop
async def test_wrong_key_gives_up_without_showing_it(harness: Harness) -> None:
    """A key the API does not know gives up with its own code (StepFun's invalid_api_key, Modelverse's
    auth_error); the key is not in the message."""
    with pytest.raises(GiveUpError) as caught:
        await harness.submit(harness.provider(key="wrong-key"))
    assert caught.value.code == WRONG_KEY_CODES[harness.api.name]
    assert "wrong-key" not in caught.value.message


@on_shared_loop
@pytest.mark.parametrize("status", [408, 500, 504], ids=["408", "500", "504"])
async def test_timeouts_and_server_errors_are_ambiguous(harness: Harness, status: int) -> None:
    """A 408, 500 or 504 in the API's own envelope may come after a paid edit: AmbiguousError
    (provider_outcome_unknown) naming the status (and Modelverse's code), one call, never resent."""
    harness.emu.config.fail_statuses = [status]
    with pytest.raises(AmbiguousError) as caught:
        await harness.submit()
    assert caught.value.code == "provider_outcome_unknown"
    assert STATUS_WORDS[harness.api.name][status] in caught.value.message
    assert "not resent" in caught.value.message
    assert harness.emu.calls == 1


@on_shared_loop
async def test_read_timeout_after_sending_is_ambiguous(harness: Harness) -> None:
    """A call that was sent but never answered may have run: AmbiguousError."""
    async with silent_server() as url:
        with pytest.raises(AmbiguousError, match="outcome unknown"):
            await harness.submit(harness.provider(base_url=url, timeout_s=0.2))


@on_shared_loop
async def test_connection_refused_retries_later(harness: Harness) -> None:
    """Nothing listening: the call never left, so it is retried later."""
    with refusing_url() as url, pytest.raises(RetryLaterError) as caught:
        await harness.submit(harness.provider(base_url=url))
    assert caught.value.code == "provider_unreachable"


@on_shared_loop
async def test_missing_key_gives_up_before_calling(harness: Harness) -> None:
    """Without its key (STEP_API_KEY, MODELVERSE_API_KEY) the job fails as not configured; nothing is sent."""
    with pytest.raises(GiveUpError) as caught:
        await harness.submit(harness.provider(key=None))
    assert caught.value.code == "provider_not_configured"
    assert harness.api.provider.key_variable in caught.value.message
    assert harness.emu.calls == 0
