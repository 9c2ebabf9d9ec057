"""The dashboard's jobs list, job page, login and static files."""

from __future__ import annotations

from starlette.routing import BaseRoute

ROUTES: list[BaseRoute] = []
