"""The route table's rows: each operation's handler beside what it takes and answers. The app's routes and
`/openapi.json`'s paths are both made from them (see `receiver.web.openapi`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]
TEXT: Mapping[str, Any] = {"type": "string"}


@dataclass(frozen=True)
class Param:
    where: Literal["path", "query", "header"]
    name: str
    schema: Mapping[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Header:
    """A header of an answer."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: TEXT)


@dataclass(frozen=True)
class Reply:
    """One non-error answer: a JSON `body` (a model of `receiver.web.schemas`), other `media` (media type ->
    schema), or nothing."""

    status: int
    description: str
    body: type[BaseModel] | None = None
    media: Mapping[str, Any] | None = None
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True)
class Operation:
    """One method on one documented path. Errors are statuses only: each is answered with the one error shape.
    Operations that are not `public` take the bearer token (and so can answer 401)."""

    method: str
    path: str
    endpoint: Endpoint
    _: KW_ONLY
    summary: str
    tag: str
    ok: Reply
    more: tuple[Reply, ...] = ()
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    example: Mapping[str, Any] | None = None
    public: bool = False
    description: str | None = None
    served_at: str | None = None  # the route's own pattern, when `path` is one instance of it


def routes(operations: Iterable[Operation]) -> list[Route]:
    """One route per pattern and handler, with the methods the table gives it, in table order."""
    methods: dict[tuple[str, Endpoint], list[str]] = {}
    for operation in operations:
        served = methods.setdefault((operation.served_at or operation.path, operation.endpoint), [])
        if operation.method not in served:
            served.append(operation.method)
    return [Route(path, endpoint, methods=listed) for (path, endpoint), listed in methods.items()]
