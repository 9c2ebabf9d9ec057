"""Settings from a `.env` file in the working directory, through the real CLI (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any receiver setting or provider key, plus `extra`."""
    keys = ("FAL_KEY", "WAVESPEED_API_KEY", "STEP_API_KEY", "MODELVERSE_API_KEY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RECEIVER_") and k.upper() not in keys}
    return {**env, **extra}


def migrate(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", "migrate"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_dotenv_in_the_working_directory_is_read(tmp_path: Path) -> None:
    """`receiver migrate` creates the database a `.env` in the working directory names (not the default)."""
    (tmp_path / ".env").write_text("# settings for this directory\nRECEIVER_DATABASE_URL=sqlite:///from-dotenv.db\n")
    result = migrate(tmp_path, clean_env())
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout
    assert (tmp_path / "from-dotenv.db").is_file()
    assert not (tmp_path / "data").exists()


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    """A variable set in the environment beats the same one in `.env`."""
    (tmp_path / ".env").write_text("RECEIVER_DATABASE_URL=sqlite:///from-dotenv.db\n")
    result = migrate(tmp_path, clean_env(RECEIVER_DATABASE_URL="sqlite:///from-env.db"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-env.db").is_file() and not (tmp_path / "from-dotenv.db").exists()
