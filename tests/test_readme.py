"""The README stays true: every setting and every CLI command is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.cli.main import app
from receiver.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def env_names() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.append(str(choices[0]) if choices else f"RECEIVER_{name.upper()}")
    return names


@pytest.mark.parametrize("env_name", env_names())
def test_every_setting_is_in_the_readme(env_name: str) -> None:
    """Each environment variable the Settings class reads appears in the README."""
    assert f"`{env_name}" in README or f"{env_name}`" in README


def test_every_setting_has_a_description() -> None:
    """Every Settings field carries a description."""
    assert all(field.description for field in Settings.model_fields.values())


@pytest.mark.parametrize("command", [c.name or "" for c in app.registered_commands] + ["jobs", "jobs show"])
def test_every_command_is_in_the_readme(command: str) -> None:
    """Each CLI command has a line in the README's CLI section."""
    assert f"receiver {command}" in README


def test_readme_names_both_setup_commands() -> None:
    """The two set-up commands lead the README."""
    assert "scripts/demo" in README and "scripts/test" in README
