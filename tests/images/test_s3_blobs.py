"""Images in an S3-compatible bucket, against a real S3 protocol server on loopback (moto): the store's contract,
write-once puts, uploads cut mid-body, the settings that choose it, and whole jobs served, redirected, purged and
sent to chat from it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import hypothesis
import pytest
import schemathesis
from pydantic import ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    status_code_conformance,
)
from typer.testing import CliRunner

from receiver.cli.main import app
from receiver.emulators.chat import ChatEmulator
from receiver.errors import RetryLaterError
from receiver.images.blobs import (
    BLOB_REFRESH_S,
    CHUNK_BYTES,
    BlobStore,
    LocalBlobStore,
    blob_key,
    blob_store_for,
    store_image,
)
from receiver.images.s3 import MAX_RETRIES, S3BlobStore
from receiver.jobs.retention import BLOB_GRACE_S, Retention
from receiver.settings import S3Location, Settings
from receiver.storage import images as stored_images
from receiver.web.asgi_server import running_server
from tests.helpers.database import read_rows
from tests.helpers.images import data_uri, png_bytes
from tests.helpers.s3 import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    CuttingProxy,
    S3Bucket,
    content_addressed,
)
from tests.helpers.stack import Stack, StackFactory, make_settings, open_clocked_stack, subscribe
from tests.helpers.waiting import until

pytest_plugins = ["tests.helpers.s3"]  # the session's moto server and a bucket per test

DAY_S = 86400.0
LATER_S = 2 * BLOB_GRACE_S  # a store clock this far ahead sees every blob as old
STEPFUN = ("stepfun", "step-image-edit-2", "image")


async def read_all(store: BlobStore, sha256: str) -> tuple[int, list[bytes]]:
    """The size `open` announces and the pieces it yields."""
    blob = await store.open(sha256)
    assert blob is not None
    return blob.size, [piece async for piece in blob.chunks]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each blob store: a local directory, and a bucket on the loopback S3 server."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return bucket.store()


# The store's contract, for both stores.


@pytest.mark.parametrize("data", [b"hello image", b"", bytes(range(256)) * 12288], ids=["small", "empty", "3mb"])
async def test_put_then_read_round_trips(store: BlobStore, data: bytes) -> None:
    """What `put` stored, `get` returns whole, `open` in pieces with its size, under the sha256 of the bytes."""
    digest = await store.put(data, content_type="image/png")
    assert digest == hashlib.sha256(data).hexdigest()
    assert await store.get(digest) == data
    size, pieces = await read_all(store, digest)
    assert size == len(data) and b"".join(pieces) == data
    if len(data) > CHUNK_BYTES:
        assert len(pieces) >= 2  # never the whole blob in one piece
    assert await store.size(digest) == len(data)
    assert await store.exists(digest)


async def test_missing_blobs_are_absent(store: BlobStore) -> None:
    """An unknown (well-formed) key: `get`, `open` and `size` are None, `exists` and `delete` False."""
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert await store.get(digest) is None and await store.open(digest) is None and await store.size(digest) is None
    assert not await store.exists(digest)
    assert not await store.delete(digest)


async def test_delete_leaves_a_fresh_blob_and_removes_an_old_one(store: BlobStore) -> None:
    """`delete(min_age_s=...)` keeps a blob written more recently than that; without a minimum age it goes."""
    digest = await store.put(b"delete me")
    assert not await store.delete(digest, min_age_s=BLOB_GRACE_S)
    assert await store.exists(digest)
    assert await store.delete(digest)
    assert not await store.exists(digest) and await store.get(digest) is None
    assert not await store.delete(digest)


@pytest.mark.parametrize(
    "key", ["", "../etc/passwd", "A" * 64, "ab" * 31 + "zz"], ids=["empty", "path", "upper", "hex"]
)
async def test_keys_that_are_not_digests_are_refused(store: BlobStore, key: str) -> None:
    """Every method refuses a key that is not a lowercase sha256 digest before it touches the store."""
    for call in (store.get, store.open, store.size, store.exists, store.delete):
        with pytest.raises(ValueError, match="sha256"):
            await call(key)


# The S3 store itself.


async def test_blobs_are_objects_under_the_prefix_in_the_local_layout(s3_bucket: S3Bucket) -> None:
    """`s3://bucket/prefix`: the blob of a digest is the object `prefix/ab/cd/<digest>`, with its content type
    and an immutable Cache-Control for clients that read it by a presigned URL."""
    store = s3_bucket.store("deep/images")
    digest = await store.put(b"layout", content_type="image/webp")
    assert list(s3_bucket.objects()) == [f"deep/images/{digest[:2]}/{digest[2:4]}/{digest}"]
    assert store.path_hint(digest) == f"s3://{s3_bucket.name}/deep/images/{blob_key(digest)}"
    url = await store.presigned_url(digest, method="GET", ttl_s=60)
    async with httpx.AsyncClient() as http:
        answer = await http.get(url)
    assert answer.content == b"layout" and answer.headers["content-type"] == "image/webp"
    assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"


async def test_storing_existing_bytes_uploads_nothing(s3_bucket: S3Bucket) -> None:
    """Write-once: storing bytes that are there (also many times at once) only asks (HEAD); one object stays."""
    with CuttingProxy(s3_bucket.endpoint) as proxy:
        store = s3_bucket.store(endpoint=proxy.url)
        first = await store.put(b"same bytes")
        uploads = [method for method, _ in proxy.requests].count("PUT")
        again = await asyncio.gather(*(store.put(b"same bytes") for _ in range(8)))
    assert set(again) == {first}
    assert uploads == 1 and [method for method, _ in proxy.requests].count("PUT") == 1
    assert len(s3_bucket.objects()) == 1


async def test_an_old_blob_stored_again_is_rewritten_whole(s3_bucket: S3Bucket) -> None:
    """Bytes stored again once their blob is older than BLOB_REFRESH_S are uploaded again (the same object, so a
    retention purge sees it as fresh, as a local store's touched file); the object stays whole throughout."""
    digest = await s3_bucket.store().put(b"old bytes")
    with CuttingProxy(s3_bucket.endpoint) as proxy:
        later = s3_bucket.store(endpoint=proxy.url, clock=lambda: time.time() + BLOB_REFRESH_S + 60)
        assert await later.put(b"old bytes") == digest
    assert [method for method, _ in proxy.requests] == ["HEAD", "PUT"]
    objects = s3_bucket.objects()
    assert len(objects) == 1 and content_addressed(objects)


async def test_min_age_is_measured_from_the_objects_last_write(s3_bucket: S3Bucket) -> None:
    """A blob written now is kept by `delete(min_age_s=BLOB_GRACE_S)`; a store whose clock reads two grace
    periods later removes it."""
    digest = await s3_bucket.store().put(b"aging")
    assert not await s3_bucket.store().delete(digest, min_age_s=BLOB_GRACE_S)
    assert await s3_bucket.store(clock=lambda: time.time() + LATER_S).delete(digest, min_age_s=BLOB_GRACE_S)
    assert s3_bucket.objects() == {}


async def test_an_upload_cut_mid_body_leaves_no_object(s3_bucket: S3Bucket) -> None:
    """A PUT whose connection dies half-way through the body fails as RetryLaterError (no retries asked for
    here) and leaves nothing in the bucket, not even an unfinished multipart upload; the next try stores it."""
    data = png_bytes(300, 300)
    with CuttingProxy(s3_bucket.endpoint, cut_puts=1) as proxy:
        store = s3_bucket.store(endpoint=proxy.url, max_retries=0)
        with pytest.raises(RetryLaterError) as failed:
            await store.put(data)
        assert failed.value.code == "blob_store_unavailable" and proxy.cut == 1
        assert s3_bucket.objects() == {} and s3_bucket.multipart_uploads() == []
        assert not await store.exists(hashlib.sha256(data).hexdigest())
        digest = await store.put(data)
    assert s3_bucket.objects() == {f"images/{blob_key(digest)}": data}


async def test_the_client_retries_a_cut_upload_itself_first(s3_bucket: S3Bucket) -> None:
    """With its default retries the store survives MAX_RETRIES cut uploads in a row within one `put`."""
    with CuttingProxy(s3_bucket.endpoint, cut_puts=MAX_RETRIES) as proxy:
        digest = await s3_bucket.store(endpoint=proxy.url).put(b"persistent" * 10_000)
    assert proxy.cut == MAX_RETRIES
    assert s3_bucket.objects() == {f"images/{blob_key(digest)}": b"persistent" * 10_000}


async def test_credentials_never_show(s3_bucket: S3Bucket) -> None:
    """Neither the store's repr nor its errors carry the secret key or the session token."""
    with CuttingProxy(s3_bucket.endpoint, cut_puts=1) as proxy:
        store = s3_bucket.store(endpoint=proxy.url, max_retries=0)
        with pytest.raises(RetryLaterError) as failed:
            await store.put(b"secret?")
    shown = f"{store!r} {store!s} {failed.value} {failed.value.__cause__!r}"
    assert s3_bucket.name in repr(store)
    assert SECRET_ACCESS_KEY not in shown and SESSION_TOKEN not in shown


async def test_an_unreachable_store_is_retry_later(s3_bucket: S3Bucket) -> None:
    """Nothing listening at the endpoint: every call is RetryLaterError `blob_store_unavailable`."""
    with CuttingProxy(s3_bucket.endpoint) as proxy:
        closed = proxy.url
    store = s3_bucket.store(endpoint=closed, max_retries=0)
    digest = hashlib.sha256(b"x").hexdigest()
    for call in (store.exists, store.get, store.open):
        with pytest.raises(RetryLaterError, match="the S3 blob store could not"):
            await call(digest)
    with pytest.raises(RetryLaterError):
        await store.put(b"x")


# Settings.


def test_blob_urls_choose_the_store(tmp_path: Path) -> None:
    """Unset: RECEIVER_DATA_DIR/blobs; file:///dir: that directory; s3://bucket/prefix: that bucket and prefix,
    with the AWS settings; an http:// endpoint is used as given."""
    local = blob_store_for(make_settings(tmp_path))
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path / "blobs"
    chosen = blob_store_for(make_settings(tmp_path, blob_url=f"file://{tmp_path}/elsewhere%20dir"))
    assert isinstance(chosen, LocalBlobStore) and chosen.root == tmp_path / "elsewhere dir"
    settings = make_settings(
        tmp_path, blob_url="s3://my-bucket/some/prefix/", aws_endpoint_url="http://127.0.0.1:9000/", aws_region="x"
    )
    assert settings.blob_location == S3Location("my-bucket", "some/prefix")
    s3 = blob_store_for(settings)
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix, s3.endpoint) == ("my-bucket", "some/prefix", "http://127.0.0.1:9000")
    assert make_settings(tmp_path, blob_url="s3://bare-bucket").blob_location == S3Location("bare-bucket", "")


@pytest.mark.parametrize(
    "url",
    ["gs://bucket/x", "http://bucket/x", "s3://", "s3:///prefix", "s3://b/x?versionId=1", "file://host/dir",
     "file:relative", "file:///", "/plain/path", "s3://bucket/a//b"],
)  # fmt: skip
def test_other_blob_urls_are_refused_naming_the_setting(tmp_path: Path, url: str) -> None:
    """Anything but s3://bucket/prefix or file:///absolute/dir is a settings error naming RECEIVER_BLOB_URL."""
    with pytest.raises(ValidationError, match="RECEIVER_BLOB_URL") as refused:
        make_settings(tmp_path, blob_url=url)
    assert refused.value.errors()[0]["loc"] == ("blob_url",)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RECEIVER_BLOB_URL": "gs://bucket/x"}, "RECEIVER_BLOB_URL"),
        ({"RECEIVER_BLOB_REDIRECT": "true"}, "RECEIVER_BLOB_REDIRECT"),
    ],
    ids=["url", "redirect"],
)
def test_the_cli_names_a_bad_blob_setting(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str) -> None:
    """A bad blob setting stops the CLI with exit 2 and the variable's name, not a traceback."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 2 and named in result.output and "Traceback" not in result.output


def test_redirects_need_s3(tmp_path: Path) -> None:
    """RECEIVER_BLOB_REDIRECT=true with a local directory is a settings error that names both settings."""
    with pytest.raises(ValidationError, match="RECEIVER_BLOB_REDIRECT=true needs an s3:// RECEIVER_BLOB_URL"):
        make_settings(tmp_path, blob_redirect=True)
    assert make_settings(tmp_path, blob_redirect=True, blob_url="s3://bucket/p").blob_redirect


def test_the_aws_variables_are_read_by_their_own_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL, AWS_REGION before AWS_DEFAULT_REGION, the keys by their
    names, from the environment or `.env`; the secrets stay hidden in the settings' repr; an empty variable is
    unset."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://general.example")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "")
    settings = make_settings(tmp_path, blob_url="s3://bucket/x")
    assert settings.aws_endpoint_url == "http://127.0.0.1:9000" and settings.aws_region == "eu-west-1"
    assert settings.aws_access_key_id == ACCESS_KEY_ID and settings.aws_session_token is None
    assert settings.aws_secret_access_key is not None
    assert settings.aws_secret_access_key.get_secret_value() == SECRET_ACCESS_KEY
    assert SECRET_ACCESS_KEY not in repr(settings)
    monkeypatch.delenv("AWS_SESSION_TOKEN")  # the environment goes before .env
    env_file = tmp_path / ".env"
    env_file.write_text("AWS_SESSION_TOKEN=from-the-env-file\nRECEIVER_BLOB_URL=s3://bucket/x\n")
    from_file = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert from_file.aws_session_token is not None
    assert from_file.aws_session_token.get_secret_value() == "from-the-env-file"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert make_settings(tmp_path).aws_region == "ap-south-1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "localhost:4566")  # not a URL: refused only when S3 is used
    assert make_settings(tmp_path).aws_endpoint_url == "localhost:4566"
    with pytest.raises(ValidationError, match="AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL must be an http"):
        make_settings(tmp_path, blob_url="s3://bucket/x")


# Whole jobs through the stack, images in the bucket.


async def finished_job(stack: Stack, color: tuple[int, int, int] = (30, 120, 200)) -> dict[str, Any]:
    """A fal job on an input image of `color`, once its images are stored."""
    job = await stack.create_job(image_url=data_uri(png_bytes(24, 16, color)))
    return await stack.wait_for(job["id"], lambda job: job["images_status"] == "stored")


def object_of(bucket: S3Bucket, sha256: str) -> bytes:
    return bucket.objects()[f"images/{blob_key(sha256)}"]


async def no_live_tasks(stack: Stack) -> bool:
    [(live,)] = await read_rows(
        stack.services.db.path, "SELECT COUNT(*) FROM tasks WHERE status NOT IN ('done', 'dead')"
    )
    return bool(live == 0)


def signed_at(query: dict[str, list[str]]) -> float:
    """When a presigned URL was signed (its `X-Amz-Date`), as Unix seconds."""
    return datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


async def test_a_job_stores_its_images_in_the_bucket_and_serves_them(
    make_stack: StackFactory, s3_bucket: S3Bucket
) -> None:
    """A fal job end to end: its output, input and their thumbnails are objects in the bucket, and
    `/v1/images/{sha256}` streams each with its type, length, ETag, immutable caching and nosniff; a matching
    If-None-Match gets 304; HEAD answers the length without a body."""
    stack = await make_stack(**s3_bucket.settings())
    job = await finished_job(stack)
    objects = s3_bucket.objects()
    assert len(objects) == 2 and content_addressed(objects)  # two images; thumbnails wait for their first request
    for image in (*job["images"], job["input_image"]):
        assert (await stack.client.get(image["thumbnail_url"])).status_code == 200
    objects = s3_bucket.objects()
    assert len(objects) == 4 and content_addressed(objects)  # and their two thumbnails
    for image in (*job["images"], job["input_image"]):
        answer = await stack.client.get(image["url"])
        assert answer.status_code == 200 and answer.content == object_of(s3_bucket, image["sha256"])
        assert answer.headers["content-type"] == image["content_type"]
        assert answer.headers["content-length"] == str(image["bytes"])
        assert answer.headers["etag"] == f'"{image["sha256"]}"'
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert answer.headers["x-content-type-options"] == "nosniff"
        thumbnail = await stack.client.get(image["thumbnail_url"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/webp"
        assert thumbnail.content == object_of(s3_bucket, thumbnail.headers["etag"].strip('"'))
        cached = await stack.client.get(image["url"], headers={"If-None-Match": answer.headers["etag"]})
        assert cached.status_code == 304 and cached.content == b""
        head = await stack.client.head(image["url"])
        assert head.status_code == 200 and head.headers["content-length"] == str(image["bytes"])
        assert head.content == b""
    unknown = hashlib.sha256(b"not stored").hexdigest()
    assert (await stack.client.get(f"/v1/images/{unknown}")).status_code == 404


async def test_redirect_mode_answers_307_to_a_presigned_url(make_stack: StackFactory, s3_bucket: S3Bucket) -> None:
    """RECEIVER_BLOB_REDIRECT=true: `/v1/images/{sha256}` answers 307 to a presigned URL, signed now and valid
    RECEIVER_BLOB_REDIRECT_TTL_S (its signed query says so); following it gives the stored bytes with their
    type; HEAD gets a URL of its own; a matching If-None-Match still gets 304; the OpenAPI document has the 307."""
    stack = await make_stack(**s3_bucket.settings(), blob_redirect=True, blob_redirect_ttl_s=120)
    job = await finished_job(stack)
    [output] = job["images"]
    async with httpx.AsyncClient() as http:
        for url, content_type in ((output["url"], output["content_type"]), (output["thumbnail_url"], "image/webp")):
            answer = await stack.client.get(url)
            assert answer.status_code == 307 and answer.content == b""
            assert answer.headers["cache-control"] == "private, max-age=60"
            location = answer.headers["location"]
            query = parse_qs(urlsplit(location).query)
            assert query["X-Amz-Expires"] == ["120"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
            assert abs(signed_at(query) - time.time()) < 300  # signed now, so it lapses 120 s from now
            credential = query["X-Amz-Credential"][0]
            assert credential.startswith(f"{ACCESS_KEY_ID}/") and f"/{REGION}/s3/" in credential
            key = urlsplit(location).path.rsplit("/", 1)[-1]
            followed = await http.get(location)
            assert followed.status_code == 200 and followed.headers["content-type"] == content_type
            assert followed.content == object_of(s3_bucket, key) and hashlib.sha256(followed.content).hexdigest() == key
            head = await stack.client.head(url)
            assert head.status_code == 307 and head.headers["location"] != location
            assert (await http.head(head.headers["location"])).status_code == 200
    cached = await stack.client.get(output["url"], headers={"If-None-Match": f'"{output["sha256"]}"'})
    assert cached.status_code == 304 and "location" not in cached.headers
    document = (await stack.client.get("/openapi.json")).json()
    redirect = document["paths"]["/v1/images/{sha256}"]["get"]["responses"]["307"]
    assert "Location" in redirect["headers"] and "RECEIVER_BLOB_REDIRECT_TTL_S" in redirect["description"]


async def test_chat_uploads_read_the_image_from_the_bucket(make_stack: StackFactory, s3_bucket: S3Bucket) -> None:
    """A Telegram subscriber gets the output image's bytes, read from the bucket by the delivery."""
    chat = ChatEmulator()
    async with running_server(chat.app) as chat_url:
        stack = await make_stack(**s3_bucket.settings(), telegram_api_url=f"{chat_url}/telegram")
        token = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
        await subscribe(stack, {"kind": "telegram", "bot_token": token, "chat_id": "42"})
        job = await finished_job(stack)
        await until(lambda: len(chat.received) == 1, what="the Telegram upload")
    [output] = job["images"]
    assert chat.received[0].files["photo"][2] == object_of(s3_bucket, output["sha256"])


async def test_retention_deletes_the_jobs_objects(make_stack: StackFactory, s3_bucket: S3Bucket) -> None:
    """Job retention removes a purged job's images from the bucket (image, input, both thumbnails) once they are
    older than the grace period, and leaves the other job's; the route then answers 404 for the purged ones."""
    stack = await make_stack(**s3_bucket.settings())
    jobs = [await finished_job(stack, color) for color in ((200, 30, 30), (30, 30, 200))]
    await until(lambda: no_live_tasks(stack), what="the jobs' tasks finished")
    purged, kept = [{image["sha256"] for image in (*job["images"], job["input_image"])} for job in jobs]
    for job in jobs:  # thumbnails are made on their first request
        for image in (*job["images"], job["input_image"]):
            assert (await stack.client.get(image["thumbnail_url"])).status_code == 200
    assert len(s3_bucket.objects()) == 8
    later = s3_bucket.store(clock=lambda: time.time() + LATER_S)  # the objects look two grace periods old
    retention = Retention(
        stack.services.db, later, clock=lambda: time.time() + 40 * DAY_S, retention_days=30, job_retention_days=7,
        interval_s=3600,
    )  # fmt: skip
    report = await retention.run_once()  # the older job goes (the newest event's job stays)
    assert report.rows["jobs"] == 1 and report.blobs == 4
    left = s3_bucket.objects()
    assert len(left) == 4 and content_addressed(left)
    for sha in purged:
        assert (await stack.client.get(f"/v1/images/{sha}")).status_code == 404
    for sha in kept:
        assert (await stack.client.get(f"/v1/images/{sha}")).status_code == 200


async def test_a_store_failing_mid_upload_is_retried_and_never_serves_partial_bytes(
    tmp_path: Path, s3_bucket: S3Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a proxy that cuts the first uploads half-way: the `fetch_images` task fails (after the client's
    own retries), is retried, and the job ends with its images. Meanwhile `/v1/images/{sha256}` answers 404 or
    the whole image and nothing else, the bucket never holds an object whose bytes do not hash to its name,
    and no log line carries a credential."""
    caplog.set_level(logging.DEBUG)
    provider, model, field = STEPFUN
    with CuttingProxy(s3_bucket.endpoint, cut_puts=MAX_RETRIES + 1) as proxy:
        async with open_clocked_stack(tmp_path, **s3_bucket.settings(endpoint=proxy.url)) as stack:
            edit = {"prompt": "make it red", field: data_uri(png_bytes(40, 30)), "response_format": "url"}
            job_id = (await stack.create(provider, model, edit))["id"]
            assert await stack.services.runner.run_once() == 1  # the synchronous edit: the job succeeds
            job = await stack.job(job_id)
            assert job["status"] == "succeeded"
            async with httpx.AsyncClient() as http:
                expected = (await http.get(job["result"]["images"][0]["url"])).content
            expected_sha = hashlib.sha256(expected).hexdigest()
            answers: list[tuple[int, bytes]] = []
            stop = asyncio.Event()

            async def watch() -> None:
                while not stop.is_set():
                    answer = await stack.client.get(f"/v1/images/{expected_sha}")
                    answers.append((answer.status_code, answer.content))
                    assert content_addressed(await asyncio.to_thread(s3_bucket.objects))
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            try:
                await stack.services.runner.run_once()  # fetch_images: every try of the output's upload dies
                assert proxy.cut == MAX_RETRIES + 1
                assert (await stack.job(job_id))["images_status"] != "stored"
                [task] = [row for row in await stack.task_rows("fetch_images") if row["job_id"] == job_id]
                assert task["status"] == "pending" and task["attempts"] == 1 and task["run_at"] > stack.clock()
                assert (await stack.client.get(f"/v1/images/{expected_sha}")).status_code == 404
                stack.clock.advance(120)
                await stack.services.runner.run_once()  # the retry stores it
            finally:
                stop.set()
                await watcher
            done = await stack.job(job_id)
            [task] = [row for row in await stack.task_rows("fetch_images") if row["job_id"] == job_id]
            served = await stack.client.get(f"/v1/images/{expected_sha}")
    assert task["status"] == "done" and task["attempts"] == 2
    assert done["images_status"] == "stored" and done["images"][0]["sha256"] == expected_sha
    assert served.status_code == 200 and served.content == expected
    assert {status for status, _ in answers} <= {200, 404} and any(status == 404 for status, _ in answers)
    assert all(body == expected for status, body in answers if status == 200)
    objects = s3_bucket.objects()
    assert content_addressed(objects) and objects[f"images/{blob_key(expected_sha)}"] == expected
    assert SECRET_ACCESS_KEY not in caplog.text and SESSION_TOKEN not in caplog.text


async def test_store_image_puts_both_blobs_before_it_returns(s3_bucket: S3Bucket) -> None:
    """`store_image` returns once the image and its thumbnail are both complete objects (the image row that
    makes an image servable is written only after it returns)."""
    stored = await store_image(s3_bucket.store(), png_bytes(64, 48), max_pixels=10_000)
    objects = s3_bucket.objects()
    assert set(objects) == {f"images/{blob_key(stored.sha256)}", f"images/{blob_key(stored.thumbnail_sha256)}"}
    assert content_addressed(objects)


async def test_the_redirect_keeps_the_image_routes_openapi_operation(
    make_stack: StackFactory, s3_bucket: S3Bucket
) -> None:
    """Generated requests for a stored image (any `thumbnail`, any `If-None-Match`) in redirect mode get only
    documented answers, in the documented shapes: the 307 and its headers are in the document (the streamed
    answers are fuzzed in tests/web/test_openapi.py)."""
    stack = await make_stack(**s3_bucket.settings(), blob_redirect=True)
    sha = (await finished_job(stack))["images"][0]["sha256"]
    await asyncio.to_thread(fuzz_image_route, stack.url, sha)


def fuzz_image_route(url: str, sha: str) -> None:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10)
    operation = schema["/v1/images/{sha256}"]["GET"]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance]

    @hypothesis.given(case=operation.as_strategy(path_parameters={"sha256": sha}))
    @hypothesis.settings(max_examples=10, deadline=None, database=None, phases=[hypothesis.Phase.generate])
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=url, checks=checks, timeout=10, allow_redirects=False)

    run()


@pytest.mark.parametrize("where", ["local", "s3"])
async def test_an_image_larger_than_a_piece_is_streamed_whole(
    make_stack: StackFactory, request: pytest.FixtureRequest, where: str
) -> None:
    """An image of several pieces (3 MiB) is streamed with its Content-Length and arrives whole, from either
    store; HEAD gives its length without reading it."""
    bucket: S3Bucket | None = request.getfixturevalue("s3_bucket") if where == "s3" else None
    stack = await make_stack(**(bucket.settings() if bucket else {}))
    data = bytes(range(256)) * 12288
    sha = await stack.services.blobs.put(data, content_type="image/png")
    row = {"content_type": "image/png", "width": 1, "height": 1, "bytes": len(data), "thumbnail_sha256": None}
    await stack.services.db.write(lambda tx: stored_images.upsert_image(tx, sha, **row, now=0.0))
    async with stack.client.stream("GET", f"/v1/images/{sha}") as answer:
        pieces = [piece async for piece in answer.aiter_raw()]
    assert answer.status_code == 200 and answer.headers["content-length"] == str(len(data))
    assert b"".join(pieces) == data and answer.headers["etag"] == f'"{sha}"'
    head = await stack.client.head(f"/v1/images/{sha}")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and head.content == b""
