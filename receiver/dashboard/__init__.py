"""The operator dashboard served at `/`: server-rendered pages (Jinja2) over the same services as the API."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from receiver.dashboard import jobs_pages, ops_pages


def dashboard_routes() -> list[BaseRoute]:
    """The dashboard's routes (pages, forms, its own static files), mounted beside the API's. None of them is
    an API operation: each is marked `include_in_schema=False`, which keeps it out of the routes
    `/openapi.json` must describe (tests/web/test_openapi.py)."""
    routes = [*jobs_pages.ROUTES, *ops_pages.ROUTES]
    for route in routes:
        if isinstance(route, Route):
            route.include_in_schema = False
    return routes
