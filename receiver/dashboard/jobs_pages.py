"""The dashboard's jobs list, job page, login and static files."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.dashboard import assets, auth
from receiver.dashboard.templating import render


async def jobs_list(request: Request) -> Response:
    session = await auth.page_session(request)
    if isinstance(session, Response):
        return session
    return render(request, "jobs.html", {"nav": "jobs", "jobs": []})


ROUTES: list[BaseRoute] = [
    *auth.ROUTES,
    *assets.ROUTES,
    Route("/", jobs_list, methods=["GET"]),
]
