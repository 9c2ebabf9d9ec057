"""The dashboard's deliveries, subscriptions and health pages."""

from __future__ import annotations

from starlette.routing import BaseRoute

ROUTES: list[BaseRoute] = []
