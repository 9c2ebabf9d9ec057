"""Settings: the DESIGN.md environment names and defaults, validation, secrecy, and the generated secret key."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from receiver.settings import Settings

PROVIDER_KEYS = ("FAL_KEY", "WAVESPEED_API_KEY", "STEP_API_KEY", "MODELVERSE_API_KEY")
URL_FIELDS = ["public_url", "fal_queue_url", "fal_jwks_url", "wavespeed_url", "stepfun_url", "modelverse_url"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the machine running the tests (environment or a `.env` in the cwd)."""
    for name in list(os.environ):
        if name.upper().startswith("RECEIVER_") or name.upper() in PROVIDER_KEYS:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def load(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_defaults_match_the_design() -> None:
    """With nothing set, every setting has the default DESIGN.md names."""
    settings = load()
    assert settings.database_url == "sqlite:///data/receiver.db"
    assert settings.database_path == Path("data/receiver.db")
    assert settings.fal_queue_url == "https://queue.fal.run"
    assert settings.fal_jwks_url == "https://rest.fal.ai/.well-known/jwks.json"
    assert settings.wavespeed_url == "https://api.wavespeed.ai"
    assert settings.stepfun_url == "https://api.stepfun.ai"
    assert settings.modelverse_url == "https://api.umodelverse.ai"
    assert settings.reconcile_after_s == 60
    assert settings.job_timeout_s == 3600
    assert settings.jwks_max_age_s == 86400
    assert settings.webhook_tolerance_s == 300
    unset = ("fal_user_id", "api_token", "secret_key", "fal_key", "wavespeed_api_key", "step_api_key")
    assert all(getattr(settings, name) is None for name in (*unset, "modelverse_api_key"))


@pytest.mark.parametrize(
    ("env", "field", "value", "expected"),
    [
        (
            "RECEIVER_DATABASE_URL",
            "database_url",
            "sqlite:////srv/receiver.db",
            "sqlite:////srv/receiver.db",
        ),
        ("RECEIVER_PUBLIC_URL", "public_url", "https://hooks.example.com/", "https://hooks.example.com"),
        ("RECEIVER_FAL_QUEUE_URL", "fal_queue_url", "http://127.0.0.1:9000/fal", "http://127.0.0.1:9000/fal"),
        ("RECEIVER_FAL_JWKS_URL", "fal_jwks_url", "https://rest.alpha.fal.ai/.well-known/jwks.json", None),
        ("RECEIVER_FAL_USER_ID", "fal_user_id", "user-123", "user-123"),
        ("RECEIVER_WAVESPEED_URL", "wavespeed_url", "http://localhost:9001", "http://localhost:9001"),
        ("RECEIVER_STEPFUN_URL", "stepfun_url", "http://localhost:9002", "http://localhost:9002"),
        ("RECEIVER_MODELVERSE_URL", "modelverse_url", "http://localhost:9003", "http://localhost:9003"),
        ("RECEIVER_RECONCILE_AFTER_S", "reconcile_after_s", "15", 15.0),
        ("RECEIVER_JOB_TIMEOUT_S", "job_timeout_s", "7200", 7200.0),
        ("RECEIVER_DATA_DIR", "data_dir", "/var/lib/receiver", Path("/var/lib/receiver")),
        ("receiver_fal_user_id", "fal_user_id", "lower-case", "lower-case"),
    ],
    ids=[
        "database_url",
        "public_url",
        "fal_queue_url",
        "fal_jwks_url",
        "fal_user_id",
        "wavespeed_url",
        "stepfun_url",
        "modelverse_url",
        "reconcile_after_s",
        "job_timeout_s",
        "data_dir",
        "lower_case_name",
    ],
)
def test_setting_is_read_from_prefixed_env(
    monkeypatch: pytest.MonkeyPatch, env: str, field: str, value: str, expected: Any
) -> None:
    """Each RECEIVER_* variable sets its field (URLs lose a trailing slash, numbers are parsed)."""
    monkeypatch.setenv(env, value)
    assert getattr(load(), field) == (value if expected is None else expected)


@pytest.mark.parametrize(
    ("env", "value", "field"),
    [("RECEIVER_API_TOKEN", "tok-123", "api_token"), ("RECEIVER_SECRET_KEY", "sek-456", "secret_key")],
    ids=["api_token", "secret_key"],
)
def test_prefixed_secret_is_read_from_env(monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str) -> None:
    """RECEIVER_API_TOKEN and RECEIVER_SECRET_KEY are read as secrets."""
    monkeypatch.setenv(env, value)
    secret = getattr(load(), field)
    assert isinstance(secret, SecretStr) and secret.get_secret_value() == value


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ("FAL_KEY", "fal_key"),
        ("WAVESPEED_API_KEY", "wavespeed_api_key"),
        ("STEP_API_KEY", "step_api_key"),
        ("MODELVERSE_API_KEY", "modelverse_api_key"),
    ],
    ids=["fal", "wavespeed", "stepfun", "modelverse"],
)
def test_provider_key_uses_the_providers_own_name(monkeypatch: pytest.MonkeyPatch, env: str, field: str) -> None:
    """Provider credentials come from the providers' own variable names, without the RECEIVER_ prefix."""
    monkeypatch.setenv(env, f"{env.lower()}-value")
    secret = getattr(load(), field)
    assert isinstance(secret, SecretStr) and secret.get_secret_value() == f"{env.lower()}-value"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///",
        "sqlite://relative.db",
        "data/receiver.db",
        "mysql:///x.db",
        "",
    ],
    ids=["no_path", "two_slashes", "bare_path", "mysql", "empty"],
)
def test_bad_database_url_names_the_field(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """A database URL that is neither sqlite:///path nor postgresql://... is a ValidationError naming database_url."""
    monkeypatch.setenv("RECEIVER_DATABASE_URL", url)
    with pytest.raises(ValidationError) as caught:
        load()
    assert [error["loc"] for error in caught.value.errors()] == [("database_url",)]


def test_postgresql_url_is_accepted_and_names_no_file() -> None:
    """postgresql:// (and libpq's postgres://) select the PostgreSQL backend; asking it for a SQLite path fails."""
    for url in ("postgresql://user:pw@127.0.0.1:5432/receiver", "postgres://db/receiver"):
        settings = load(database_url=url)
        assert not settings.is_sqlite
        with pytest.raises(ValueError, match="PostgreSQL"):
            _ = settings.database_path


def test_absolute_database_path() -> None:
    """Four slashes give an absolute path; three a path relative to the working directory."""
    assert load(database_url="sqlite:////srv/data/receiver.db").database_path == Path("/srv/data/receiver.db")
    assert load(database_url="sqlite:///rel/receiver.db").database_path == Path("rel/receiver.db")


@pytest.mark.parametrize("field", URL_FIELDS, ids=URL_FIELDS)
@pytest.mark.parametrize(
    "url",
    ["ftp://hooks.example.com", "hooks.example.com", "//hooks.example.com", "http://", "https:///path", "http://[::1"],
    ids=["ftp", "no_scheme", "scheme_relative", "no_host", "empty_host", "broken_ipv6"],
)
def test_non_http_url_names_the_field(monkeypatch: pytest.MonkeyPatch, field: str, url: str) -> None:
    """A URL setting that is not http(s) with a host is a ValidationError naming that field."""
    monkeypatch.setenv(f"RECEIVER_{field.upper()}", url)
    with pytest.raises(ValidationError) as caught:
        load()
    errors = caught.value.errors()
    assert [error["loc"] for error in errors] == [(field,)]
    assert "http(s) URL" in errors[0]["msg"]


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("RECEIVER_RECONCILE_AFTER_S", "0"),
        ("RECEIVER_JOB_TIMEOUT_S", "-5"),
        ("RECEIVER_JOB_TIMEOUT_S", "an hour"),
        ("RECEIVER_JWKS_MAX_AGE_S", "172800"),
        ("RECEIVER_WEBHOOK_TOLERANCE_S", "0"),
    ],
    ids=["zero_reconcile", "negative_timeout", "words_timeout", "jwks_over_a_day", "zero_tolerance"],
)
def test_out_of_range_numbers_name_the_field(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    """Numbers out of range or not numbers at all are ValidationErrors naming their field."""
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as caught:
        load()
    assert [error["loc"] for error in caught.value.errors()] == [(env.removeprefix("RECEIVER_").lower(),)]


def test_secrets_never_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret value shows in repr() or str() of the settings or of their fields."""
    values = {
        "RECEIVER_SECRET_KEY": "secret-key-value-1",
        "RECEIVER_API_TOKEN": "api-token-value-2",
        "FAL_KEY": "fal-key-value-3",
        "WAVESPEED_API_KEY": "wavespeed-key-value-4",
        "STEP_API_KEY": "step-key-value-5",
        "MODELVERSE_API_KEY": "modelverse-key-value-6",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load()
    shown = repr(settings) + str(settings) + repr(settings.model_dump()) + settings.model_dump_json()
    for value in values.values():
        assert value not in shown
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "api-token-value-2"


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
@pytest.mark.parametrize(
    "env", ["RECEIVER_API_TOKEN", "RECEIVER_SECRET_KEY", "FAL_KEY"], ids=["api_token", "secret_key", "fal_key"]
)
def test_empty_secret_counts_as_unset(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    """An empty secret (`RECEIVER_API_TOKEN=` in a .env) is unset, so it cannot pass for a configured token."""
    monkeypatch.setenv(env, value)
    settings = load()
    assert settings.api_token is None and settings.secret_key is None and settings.fal_key is None


def test_every_setting_is_described() -> None:
    """Every field carries a description (the README's settings table is built from them)."""
    assert all(field.description for field in Settings.model_fields.values())


# --- the webhook-token secret -------------------------------------------------------------------


def test_configured_secret_key_wins(tmp_path: Path) -> None:
    """A configured secret key is used as is and no key file is written."""
    settings = load(secret_key="configured", data_dir=tmp_path / "data")
    assert settings.resolve_secret_key() == b"configured"
    assert not (tmp_path / "data").exists()


def test_secret_key_is_generated_once(tmp_path: Path) -> None:
    """Without a configured key one is generated into data_dir (mode 0600) and reused from then on."""
    data_dir = tmp_path / "nested" / "data"
    first = load(data_dir=data_dir).resolve_secret_key()
    path = data_dir / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load(data_dir=data_dir).resolve_secret_key() == first
    assert load(data_dir=data_dir).resolve_secret_key() == first
    assert path.read_text().strip().encode() == first
    assert sorted(p.name for p in data_dir.iterdir()) == ["secret_key"]  # no temporary files left behind


def test_generated_keys_differ_between_data_dirs(tmp_path: Path) -> None:
    """Two data dirs get two different generated keys."""
    assert load(data_dir=tmp_path / "a").resolve_secret_key() != load(data_dir=tmp_path / "b").resolve_secret_key()


def test_existing_key_file_is_used(tmp_path: Path) -> None:
    """A key file that exists is read (surrounding whitespace ignored) and not rewritten."""
    (tmp_path / "secret_key").write_text("kept-from-before\n")
    assert load(data_dir=tmp_path).resolve_secret_key() == b"kept-from-before"
    assert (tmp_path / "secret_key").read_text() == "kept-from-before\n"


def test_empty_key_file_is_replaced(tmp_path: Path) -> None:
    """An empty key file (a crash mid-write) is never used as the secret: a fresh key replaces it."""
    path = tmp_path / "secret_key"
    path.write_text("")
    key = load(data_dir=tmp_path).resolve_secret_key()
    assert key
    assert path.read_text().encode() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(data_dir=tmp_path).resolve_secret_key() == key
