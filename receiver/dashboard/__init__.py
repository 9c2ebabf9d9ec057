"""The operator dashboard served at `/`: server-rendered pages (Jinja2) over the same services as the API."""

from __future__ import annotations

from starlette.routing import BaseRoute

from receiver.dashboard import jobs_pages, ops_pages


def dashboard_routes() -> list[BaseRoute]:
    """The dashboard's routes (pages, forms, its own static files), mounted beside the API's."""
    return [*jobs_pages.ROUTES, *ops_pages.ROUTES]
