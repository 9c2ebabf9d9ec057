"""The service's configuration: one pydantic-settings class, read from the environment and `.env`."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from receiver.support.private_paths import make_private_dirs

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


class Settings(BaseSettings):
    """Every knob of the receiver. Names are contracts (see DESIGN.md); the README lists them all."""

    model_config = SettingsConfigDict(
        env_prefix="RECEIVER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    database_url: str = Field(
        "sqlite:///data/receiver.db",
        description="sqlite:///relative/path.db or sqlite:////absolute/path.db (the embedded default), or "
        "postgresql://user:password@host:port/database for several processes or machines.",
    )
    data_dir: Path = Field(
        Path("data"), description="Directory for the generated secret key and (later) stored images."
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL providers use to reach our webhooks, e.g. https://hooks.example.com",
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated extra Host names the server answers to, beyond loopback names, the "
        "listening address and RECEIVER_PUBLIC_URL's host (e.g. the name a reverse proxy forwards).",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Server secret for per-job webhook tokens and for sealing stored credentials; "
        "generated into the data dir if unset.",
    )
    old_secret_keys: SecretStr | None = Field(
        None,
        description="Comma-separated previous secret keys: credentials sealed with them still open (and are "
        "re-sealed with the current key at start-up) after RECEIVER_SECRET_KEY changes.",
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token for /v1; without it the server refuses a non-loopback address."
    )
    fal_queue_url: str = Field("https://queue.fal.run", description="fal queue API base URL.")
    fal_jwks_url: str = Field(
        "https://rest.fal.ai/.well-known/jwks.json", description="JWKS with fal's webhook signing keys."
    )
    fal_user_id: str | None = Field(None, description="Optional: accept fal webhooks for this user id only.")
    wavespeed_url: str = Field("https://api.wavespeed.ai", description="WaveSpeed API base URL.")
    stepfun_url: str = Field("https://api.stepfun.ai", description="StepFun API base URL.")
    modelverse_url: str = Field("https://api.umodelverse.ai", description="Modelverse API base URL.")

    fal_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("FAL_KEY", "fal_key"), description="fal API key."
    )
    wavespeed_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("WAVESPEED_API_KEY", "wavespeed_api_key"),
        description="WaveSpeed API key.",
    )
    step_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("STEP_API_KEY", "step_api_key"), description="StepFun API key."
    )
    modelverse_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("MODELVERSE_API_KEY", "modelverse_api_key"),
        description="Modelverse API key.",
    )

    reconcile_after_s: float = Field(
        60.0, gt=0, description="Seconds after submission with no terminal event before polling the provider."
    )
    reconcile_interval_s: float = Field(5.0, gt=0, description="How often the reconciler looks for due jobs.")
    poll_interval_s: float = Field(10.0, gt=0, description="Gap after a job's first poll; it doubles each poll.")
    poll_max_interval_s: float = Field(300.0, gt=0, description="Longest gap between two polls of one job.")
    job_timeout_s: float = Field(
        3600.0, gt=0, description="Seconds after creation before an unfinished job is marked failed."
    )
    retention_days: float = Field(
        30.0,
        ge=0,
        description="Finished tasks, inbox rows of final jobs, events and delivered/dead deliveries (with their "
        "attempt logs) older than this many days are purged (Idempotency-Key records too); 0 keeps them "
        "forever; otherwise at least 1 (an Idempotency-Key is honoured for at least 24 h).",
    )
    job_retention_days: float | None = Field(
        None,
        description="If set (at least 1: a job's Idempotency-Key goes with it and is honoured 24 h): final jobs "
        "finished this many days ago are purged with all their rows and the stored images no other job uses; "
        "unset keeps jobs and images forever.",
    )
    retention_interval_s: float = Field(3600.0, gt=0, description="How often the retention purge runs.")
    retention_batch: int = Field(
        500, ge=10, le=100_000, description="Most rows one purge write deletes (keeps the writer free for webhooks)."
    )
    max_body_bytes: int = Field(25 * 1024 * 1024, gt=0, description="Largest request body accepted (API and webhooks).")
    max_json_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="Largest JSON body accepted under /v1 (enough for a data-URI input image); at most "
        "max_body_bytes. Bodies over 256 KiB are taken one at a time.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a request body under /v1 may take per MiB begun (a minimum upload rate); a slower "
        "body gets 408. Bodies are read whole before they wait for the one-at-a-time parse.",
    )
    webhook_tolerance_s: int = Field(
        300, gt=0, le=3600, description="Accepted clock skew for signed webhook timestamps."
    )
    jwks_max_age_s: float = Field(
        86400.0, gt=0, le=86400, description="Longest time a fetched JWKS is trusted (at most 24 h)."
    )
    jwks_refetch_interval_s: float = Field(
        30.0, ge=0, description="Least time between two JWKS refetches caused by an unknown key."
    )
    task_concurrency: int = Field(
        8,
        ge=1,
        description="Tasks the runner executes at once besides provider calls, image copies and deliveries "
        "(event fan-out).",
    )
    task_provider_concurrency: int = Field(
        8,
        ge=1,
        description="Provider calls (submits, polls, cancels) in flight at once, per provider; a "
        "provider that hangs holds only these.",
    )
    task_lease_s: float = Field(
        15.0,
        gt=0,
        description="Lease on a claimed task before others may take it; its runner's heartbeat extends it every "
        "third of it.",
    )
    task_poll_interval_s: float = Field(1.0, gt=0, description="Idle task runner wake-up interval.")
    # --- issue 10: scale-out (each helper appends its own settings inside its own marked block) ---
    # [blobs]
    blob_url: str | None = Field(
        None,
        description="Where images are stored: unset or file:///absolute/dir for a local directory (default: "
        "RECEIVER_DATA_DIR/blobs), or s3://bucket/prefix (endpoint, region and credentials from the usual AWS_* "
        "variables).",
    )
    blob_redirect: bool = Field(
        False,
        description="With S3 storage, answer GET /v1/images/{sha256} with a redirect to a short-lived presigned "
        "URL instead of streaming the bytes through the receiver.",
    )
    blob_redirect_ttl_s: float = Field(
        300.0, gt=0, le=7 * 86400, description="Lifetime of a presigned image URL (RECEIVER_BLOB_REDIRECT)."
    )
    # The S3 client's settings keep AWS's own names (the S3 client also reads any other AWS_* variable itself:
    # web identity, container and instance credentials, virtual-hosted-style requests).
    aws_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT", "aws_endpoint_url"),
        description="S3 endpoint for an s3:// RECEIVER_BLOB_URL (MinIO, R2, ...; AWS_ENDPOINT_URL_S3 first, then "
        "AWS_ENDPOINT_URL); unset: AWS's regional endpoint. An http:// endpoint is allowed as given.",
    )
    aws_region: str | None = Field(
        None,
        validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION", "aws_region"),
        description="Region of the S3 bucket (AWS_REGION, else AWS_DEFAULT_REGION); unset: us-east-1.",
    )
    aws_access_key_id: str | None = Field(
        None,
        validation_alias=AliasChoices("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        description="S3 access key id; unset: the S3 client's own credential chain (web identity, container or "
        "instance credentials).",
    )
    aws_secret_access_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        description="S3 secret access key (with AWS_ACCESS_KEY_ID).",
    )
    aws_session_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AWS_SESSION_TOKEN", "aws_session_token"),
        description="S3 session token of temporary credentials (with AWS_ACCESS_KEY_ID).",
    )

    @field_validator(
        "blob_url", "aws_endpoint_url", "aws_region", "aws_access_key_id", "aws_secret_access_key",
        "aws_session_token", mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_blob_setting_is_unset(cls, value: object) -> object:
        # `AWS_SESSION_TOKEN=` (or any of these, empty) in an environment means "not set".
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    @field_validator("blob_url")
    @classmethod
    def _check_blob_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_blob_url(value)
        return value

    @model_validator(mode="after")
    def _check_s3_settings(self) -> Settings:
        # The AWS variables are checked only when images go to S3: a machine's environment may hold them for
        # other programs, in forms this service never reads.
        if not isinstance(parse_blob_url(self.blob_url), S3Location):
            if self.blob_redirect:
                raise ValueError(
                    "RECEIVER_BLOB_REDIRECT=true needs an s3:// RECEIVER_BLOB_URL: a local directory has no "
                    "presigned URLs"
                )
        elif self.aws_endpoint_url is not None:
            try:
                self.aws_endpoint_url = _check_http_url(self.aws_endpoint_url).rstrip("/")
            except ValueError as exc:
                raise ValueError(f"AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL {exc}") from None
        return self

    @property
    def blob_location(self) -> Path | S3Location:
        """Where the blob store keeps images: a local directory, or an S3 bucket and key prefix."""
        return parse_blob_url(self.blob_url) or self.blobs_dir

    # [/blobs]
    # [postgres]
    database_pool_size: int = Field(
        10,
        ge=2,
        le=200,
        description="PostgreSQL: connections each process keeps in its pools, half for its "
        "writer threads and the rest for reads; LISTEN and each task runner's liveness lock hold one more each.",
    )
    # [/postgres]
    # [roles]
    # [/roles]
    # --- issue 11: operator surfaces (each helper appends its own settings inside its own marked block) ---
    # [dashboard]
    # [/dashboard]
    # [alerts]
    alert_subscription: str | None = Field(
        None,
        description="Subscription id (`sub_...`) that receives operator alerts (a subscription disabled, dead "
        "letters piling up, webhooks stopping while jobs wait); unset sends none.",
    )
    alert_interval_s: float = Field(
        60.0, gt=0, description="How often a worker checks whether an alert should go out (seconds)."
    )
    alert_rate_limit_s: float = Field(
        3600.0,
        ge=0,
        description="At most one alert of each kind per this many seconds, across every worker; what happens "
        "meanwhile is told by the next one.",
    )
    alert_dead_letters: int = Field(
        10,
        ge=1,
        description="Dead letters (deliveries and tasks that died since the last such alert, alerts' own left "
        "out) that raise an alert.",
    )
    alert_webhook_silence_s: float = Field(
        1800.0,
        gt=0,
        description="Alert when a webhook provider (fal, WaveSpeed with webhooks on) sent no webhook for this "
        "many seconds while jobs have waited at it as long (or the reconciler had to settle them by polling).",
    )
    # [/alerts]
    # [observability]
    metrics_public: bool = Field(
        False, description="Serve GET /metrics without the API token (for a scraper on a private network)."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as human text, or one JSON object per line (job id, provider, request id bound)."
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port for GET /metrics of each worker process (`serve --role worker`, and the worker child of "
        "`--role all`); unset: workers serve no metrics.",
    )
    worker_metrics_host: str = Field("127.0.0.1", description="Address the worker's metrics port binds.")

    @model_validator(mode="after")
    def _check_worker_metrics_host(self) -> Settings:
        # As `serve` refuses a web port beyond loopback without a token, so a worker's metrics port: without a
        # token its /metrics would be open to the network, unless RECEIVER_METRICS_PUBLIC says that is meant.
        host = self.worker_metrics_host
        if self.worker_metrics_port is None or self.api_token is not None or self.metrics_public:
            return self
        with contextlib.suppress(ValueError):
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return self
        raise ValueError(
            f"RECEIVER_WORKER_METRICS_HOST={host} is beyond loopback: set RECEIVER_API_TOKEN "
            "(or RECEIVER_METRICS_PUBLIC=true to serve the metrics without it)"
        )

    # [/observability]
    # [pipeline]
    image_concurrency: int = Field(
        32,
        ge=1,
        description="Image copies (fetch_images) the runner executes at once: network-bound work, so many slots; "
        "one provider's copies hold at most half of them. Their decoding runs on the thread pool.",
    )
    # [/pipeline]
    provider_timeout_s: float = Field(30.0, gt=0, description="Timeout for one provider API call.")
    sync_timeout_s: float = Field(
        180.0, ge=120, description="Timeout of a synchronous edit call (StepFun, Modelverse); at least 120 s."
    )
    wavespeed_webhook_secret: SecretStr | None = Field(
        None, description="WaveSpeed's `whsec_` webhook secret; fetched from WaveSpeed (and cached) if unset."
    )
    wavespeed_webhooks: bool = Field(True, description="Ask WaveSpeed for webhooks; false = polling only.")
    wavespeed_poll_after_s: float = Field(
        3.0, gt=0, description="Seconds after a WaveSpeed submit before the first poll (polling is the backstop)."
    )
    wavespeed_poll_interval_s: float = Field(3.0, gt=0, description="Gap after a WaveSpeed job's first poll; doubles.")
    wavespeed_max_attempts: int = Field(
        3, ge=1, description="WaveSpeed submits per job when predictions fail with a retryable 5xxx code."
    )
    fal_concurrency: int = Field(0, ge=0, description="Most fal jobs at the provider at once (0 = no limit).")
    wavespeed_concurrency: int = Field(
        2, ge=0, description="Most WaveSpeed jobs at once (0 = no limit; the Bronze tier allows 2)."
    )
    stepfun_concurrency: int = Field(5, ge=0, description="Most StepFun calls at once (0 = no limit).")
    modelverse_concurrency: int = Field(4, ge=0, description="Most Modelverse calls at once (0 = no limit).")
    fal_rate_per_min: int = Field(0, ge=0, description="Most fal submits per minute (0 = no limit).")
    wavespeed_rate_per_min: int = Field(0, ge=0, description="Most WaveSpeed submits per minute (0 = no limit).")
    stepfun_rate_per_min: int = Field(0, ge=0, description="Most StepFun calls per minute (0 = no limit).")
    modelverse_rate_per_min: int = Field(0, ge=0, description="Most Modelverse calls per minute (0 = no limit).")
    fetch_allow_private: bool = Field(
        False, description="Allow http and non-global addresses when fetching images (loopback emulators)."
    )
    fetch_max_bytes: int = Field(50 * 1024 * 1024, gt=0, description="Largest image fetched from a URL.")
    fetch_allowed_hosts: str = Field(
        "",
        description="Comma-separated hosts (or *.suffix) result images may also come from, beyond each "
        "provider's documented hosts.",
    )
    fetch_max_pixels: int = Field(50_000_000, gt=0, description="Largest image (width x height) we decode.")
    notify_allow_private: bool = Field(
        False, description="Allow http and non-global addresses as notification targets (development)."
    )
    notify_timeout_s: float = Field(15.0, gt=0, description="Timeout of one notification attempt.")
    notify_retry_scale: float = Field(
        1.0, gt=0, le=1, description="Shrinks the day-long delivery retry schedule (tests and demos only)."
    )
    notify_concurrency: int = Field(
        256,
        ge=1,
        description="Deliveries in flight at once over all targets (slots and connections of their own; a "
        "target holds at most four times RECEIVER_NOTIFY_CONCURRENCY_PER_TARGET of them).",
    )
    notify_concurrency_per_target: int = Field(
        4, ge=1, description="Deliveries in flight to one target at once (callback URLs: per host)."
    )
    notify_breaker_failures: int = Field(
        5,
        ge=1,
        description="Consecutive attempts without an answer (timeout, connection failure) that open a "
        "target's circuit.",
    )
    notify_breaker_open_s: float = Field(
        30.0, gt=0, description="First open-circuit window of a target; doubles with each opening in a row."
    )
    notify_breaker_max_open_s: float = Field(600.0, gt=0, description="Longest open-circuit window of a target.")
    notify_disable_after_s: float = Field(
        3 * 86400.0, gt=0, description="A subscription failing without a success for this long is disabled."
    )
    secret_grace_s: float = Field(
        86400.0, ge=0, description="After a subscription secret is rotated, the old one also signs this long."
    )
    callback_secret: SecretStr | None = Field(
        None, description="whsec_ secret signing per-job callback_url deliveries; derived from the secret key if unset."
    )
    telegram_api_url: str = Field("https://api.telegram.org", description="Telegram Bot API base URL.")
    stream_ping_s: float = Field(15.0, gt=0, description="Keep-alive comment interval of GET /v1/stream.")
    stream_max_clients: int = Field(
        100, ge=1, description="Most GET /v1/stream clients open at once in one process; more get 503 with Retry-After."
    )
    verify_threads: int = Field(
        1,
        ge=0,
        le=1,
        description="1: verify Ed25519 signatures on a second thread (libsodium releases the GIL there; measured"
        " faster); 0: on the event loop.",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    @field_validator(
        "public_url", "fal_queue_url", "wavespeed_url", "stepfun_url", "modelverse_url", "telegram_api_url"
    )
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return _check_http_url(value).rstrip("/")

    @field_validator("fal_jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str) -> str:
        return _check_http_url(value)  # a full document URL: kept exactly as given

    @field_validator(
        "secret_key",
        "old_secret_keys",
        "api_token",
        "fal_key",
        "wavespeed_api_key",
        "step_api_key",
        "modelverse_api_key",
        "wavespeed_webhook_secret",
        "callback_secret",
        mode="before",
    )
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        # `RECEIVER_API_TOKEN=` in a .env means "not set". Kept as an empty SecretStr it would pass the
        # CLI's "is a token configured" check while the app treats it as no token: an open /v1.
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    @field_validator("retention_days")
    @classmethod
    def _retention_keeps_a_day(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("must be 0 (keep forever) or at least 1 day: Idempotency-Keys are kept 24 h")
        return value

    @field_validator("job_retention_days", mode="before")
    @classmethod
    def _empty_days_is_unset(cls, value: object) -> object:
        # `RECEIVER_JOB_RETENTION_DAYS=` in a .env means "keep jobs forever", not a parse error.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("job_retention_days")
    @classmethod
    def _job_retention_keeps_a_day(cls, value: float | None) -> float | None:
        # A purged job takes its Idempotency-Key along: a retry under it would then pay for a second job.
        if value is not None and not value >= 1:
            raise ValueError("must be unset (keep jobs forever) or at least 1 day: Idempotency-Keys are kept 24 h")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value.startswith(POSTGRES_PREFIXES):
            return value
        if not value.startswith(SQLITE_PREFIX) or value == SQLITE_PREFIX:
            raise ValueError(
                "must look like sqlite:///relative/file.db, sqlite:////absolute/file.db or"
                " postgresql://user:password@host:port/database"
            )
        return value

    @property
    def extra_allowed_hosts(self) -> tuple[str, ...]:
        return tuple(host.strip().lower() for host in self.allowed_hosts.split(",") if host.strip())

    @property
    def extra_fetch_hosts(self) -> tuple[str, ...]:
        return tuple(host.strip() for host in self.fetch_allowed_hosts.split(",") if host.strip())

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith(SQLITE_PREFIX)

    @property
    def database_path(self) -> Path:
        """The SQLite file named by `database_url` (relative paths are relative to the working dir); a
        ValueError for a PostgreSQL URL, which names no file."""
        if not self.is_sqlite:
            raise ValueError("RECEIVER_DATABASE_URL names a PostgreSQL database, not a SQLite file")
        return Path(self.database_url[len(SQLITE_PREFIX) :])

    @property
    def old_secret_key_list(self) -> tuple[bytes, ...]:
        raw = self.old_secret_keys.get_secret_value() if self.old_secret_keys else ""
        return tuple(key.strip().encode() for key in raw.split(",") if key.strip())

    def resolve_secret_key(self) -> bytes:
        """The webhook-token secret: the setting, else a key kept in `data_dir/secret_key` (made once)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "secret_key"
        key = _read_key(path)
        if key is None:
            key = _create_key(path)
        return key.encode()


# [blobs]
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")


@dataclass(frozen=True, slots=True)
class S3Location:
    """An `s3://bucket/prefix` blob URL: the bucket and the key prefix (no leading or trailing slash)."""

    bucket: str
    prefix: str


def parse_blob_url(url: str | None) -> Path | S3Location | None:
    """What a RECEIVER_BLOB_URL names (None for unset); ValueError, naming the setting, for anything else."""
    if url is None:
        return None
    message = (
        "RECEIVER_BLOB_URL must be s3://bucket/prefix (an S3 bucket and an optional key prefix) or "
        "file:///absolute/directory"
    )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(message) from None
    if parts.query or parts.fragment:
        raise ValueError(message)
    if parts.scheme == "s3" and _BUCKET.fullmatch(parts.netloc) and "//" not in parts.path.strip("/"):
        return S3Location(parts.netloc, parts.path.strip("/"))
    path = unquote(parts.path)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and path.startswith("/") and path != "/":
        return Path(path)
    raise ValueError(message)


# [/blobs]


def _check_http_url(value: str) -> str:
    message = "must be an http(s) URL with a host, e.g. https://hooks.example.com"
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ValueError(message) from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(message)
    return value


def _read_key(path: Path) -> str | None:
    """The stored key, or None when there is none (no file, or an empty one left by a crash)."""
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        return None
    return key or None


def _create_key(path: Path) -> str:
    """Write a new key, readable by the owner only, all at once: never an empty or half-written file."""
    make_private_dirs(path.parent)
    key = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(tmp, path)  # atomic, and refuses to replace a key another process just made
        except FileExistsError:
            existing = _read_key(path)
            if existing is not None:
                return existing
            os.replace(tmp, path)  # an empty file left by a crash: replace it
    finally:
        tmp.unlink(missing_ok=True)
    return key
