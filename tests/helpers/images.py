"""Test images: real PNG bytes made with Pillow, data URIs, the sample image the package ships, image sizes."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

import receiver

SAMPLE_PNG = Path(receiver.__file__).parent / "assets" / "sample.png"
SMALL_PNG_URI = "data:image/png;base64," + (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8ISfHgA0wYRUdtBIA0MoBFD5jqJkAAAAASUVORK5CYII="
)  # an 8x8 PNG


def png_bytes(width: int = 32, height: int = 24, color: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    """A one-colour RGB PNG of this size."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_data_uri(width: int = 32, height: int = 24) -> str:
    """`png_bytes` of this size as a data URI."""
    return data_uri(png_bytes(width, height))


def image_size(data: bytes) -> tuple[int, int]:
    """The (width, height) of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def served_image_size(http: httpx.AsyncClient, url: str) -> tuple[int, int]:
    """GET `url` (asserting the 200) and the size of the image it serves."""
    response = await http.get(url)
    assert response.status_code == 200, response.text
    return image_size(response.content)


async def image_route(request: Request) -> Response:
    """`GET /images/{name}` of an image host: `sample.png` is 32x24, `wide.png` 20x10, `big.png` 4097x8, anything
    else a 404."""
    sizes = {"sample.png": (32, 24), "wide.png": (20, 10), "big.png": (4097, 8)}
    size = sizes.get(request.path_params["name"])
    if size is None:
        return Response("no such image", status_code=404)
    return Response(png_bytes(*size), media_type="image/png")
