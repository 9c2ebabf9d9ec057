"""The service's configuration: one pydantic-settings class, read from the environment and `.env`."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SQLITE_PREFIX = "sqlite:///"


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
        description="sqlite:///relative/path.db or sqlite:////absolute/path.db",
    )
    data_dir: Path = Field(
        Path("data"), description="Directory for the generated secret key and (later) stored images."
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL providers use to reach our webhooks, e.g. https://hooks.example.com",
    )
    secret_key: SecretStr | None = Field(
        None, description="Server secret for per-job webhook tokens; generated into the data dir if unset."
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
    max_body_bytes: int = Field(25 * 1024 * 1024, gt=0, description="Largest request body accepted (API and webhooks).")
    webhook_tolerance_s: int = Field(
        300, gt=0, le=3600, description="Accepted clock skew for signed webhook timestamps."
    )
    jwks_max_age_s: float = Field(
        86400.0, gt=0, le=86400, description="Longest time a fetched JWKS is trusted (at most 24 h)."
    )
    jwks_refetch_interval_s: float = Field(
        30.0, ge=0, description="Least time between two JWKS refetches caused by an unknown key."
    )
    task_concurrency: int = Field(8, ge=1, description="Tasks the runner executes at once.")
    task_lease_s: float = Field(120.0, gt=0, description="Lease on a claimed task before others may take it.")
    task_poll_interval_s: float = Field(1.0, gt=0, description="Idle task runner wake-up interval.")
    provider_timeout_s: float = Field(30.0, gt=0, description="Timeout for one provider API call.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    @field_validator("public_url", "fal_queue_url", "wavespeed_url", "stepfun_url", "modelverse_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(SQLITE_PREFIX) or value == SQLITE_PREFIX:
            raise ValueError("must look like sqlite:///relative/file.db or sqlite:////absolute/file.db")
        return value

    @property
    def database_path(self) -> Path:
        """The SQLite file named by `database_url` (relative paths are relative to the working dir)."""
        return Path(self.database_url[len(SQLITE_PREFIX) :])

    def resolve_secret_key(self) -> bytes:
        """The webhook-token secret: the setting, else a key kept in `data_dir/secret_key` (made once)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text().strip().encode()
