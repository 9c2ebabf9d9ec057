"""Checks on image bytes from outside (PNG, JPEG, WebP only; pixel cap before decoding) and thumbnails.

Pure and synchronous: callers run these in a thread. The format is recognised from the magic bytes and
the file opened with that one Pillow plugin directly, not through `Image.open`, so Pillow's global
decompression-bomb check (a process-wide setting that warns, and raises past twice its limit) never
runs: our own `max_pixels` is compared with the header's size before any pixel is decoded, and a
warning filter, which is process-wide and not thread-safe, is never needed. (The WebP plugin checks
twice Pillow's limit by itself, raising only; that refusal is reported as `too_many_pixels` too.)
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps
from PIL.JpegImagePlugin import JpegImageFile
from PIL.PngImagePlugin import PngImageFile
from PIL.WebPImagePlugin import WebPImageFile

from receiver.errors import GiveUpError

MAX_PIXELS = 50_000_000
THUMBNAIL_SIZE = 256
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}

# What Pillow's plugins raise for bytes that are not (or not entirely) an image of their format.
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, KeyError)


@dataclass(frozen=True, slots=True)
class StoredImageFacts:
    """What a checked image is: its content type and its size in pixels (as stored, before EXIF rotation)."""

    content_type: str
    width: int
    height: int


def check_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """(content type, width, height) of a complete PNG, JPEG or WebP image of at most `max_pixels` pixels.

    Raises GiveUpError with code `unsupported_image` (another image format), `too_many_pixels` (judged
    from the header, before decoding) or `not_an_image` (unrecognised, truncated or corrupt: every pixel
    is decoded to find out).
    """
    with _load(data, max_pixels) as image:
        return _facts(image)


def make_thumbnail(data: bytes, *, size: int = THUMBNAIL_SIZE, max_pixels: int = MAX_PIXELS) -> bytes:
    """A WebP at most `size` pixels on its longer side, upright per EXIF. The format and the pixel cap are
    checked as `check_image` does, but the pixels are decoded only as far as the thumbnail needs them (a JPEG
    at 1/2 to 1/8 scale): for images `check_image` already passed. Bytes that do not decode are
    `not_an_image`."""
    with _open(data, max_pixels) as image:
        try:
            return _thumbnail(image, size)
        except _UNREADABLE as exc:
            raise GiveUpError(f"{image.format} image is truncated or corrupt: {exc}", code="not_an_image") from None


def inspect_image(
    data: bytes, *, max_pixels: int = MAX_PIXELS, thumbnail_size: int = THUMBNAIL_SIZE
) -> tuple[StoredImageFacts, bytes]:
    """`check_image` and `make_thumbnail` in one decode."""
    with _load(data, max_pixels) as image:
        content_type, width, height = _facts(image)
        return StoredImageFacts(content_type, width, height), _thumbnail(image, thumbnail_size)


def _facts(image: ImageFile.ImageFile) -> tuple[str, int, int]:
    return CONTENT_TYPES[image.format or ""], image.width, image.height


def _load(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """The image opened and every pixel decoded (a truncated or corrupt file fails here)."""
    image = _open(data, max_pixels)
    try:
        image.load()
    except _UNREADABLE as exc:
        image.close()
        raise GiveUpError(f"{image.format} image is truncated or corrupt: {exc}", code="not_an_image") from None
    return image


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """The image opened with its format's plugin, its size checked against `max_pixels`, nothing decoded."""
    plugin = _plugin_for(data)
    if plugin is WebPImageFile:
        # The WebP plugin allocates its canvas while opening, so the size is checked from the header first.
        size = _webp_size(data)
        if size is None:
            raise GiveUpError("the WebP header is malformed", code="not_an_image")
        _check_pixels(size, max_pixels)
    try:
        image = plugin(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise GiveUpError(f"image refused as a decompression bomb: {exc}", code="too_many_pixels") from None
    except _UNREADABLE as exc:
        raise GiveUpError(f"not a readable {plugin.format} image: {exc}", code="not_an_image") from None
    try:
        _check_pixels(image.size, max_pixels)
    except GiveUpError:
        image.close()
        raise
    return image


def _plugin_for(data: bytes) -> type[ImageFile.ImageFile]:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImageFile
    if data.startswith(b"\xff\xd8\xff"):
        return JpegImageFile
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WebPImageFile
    other = _other_format(data[:16])
    if other is not None:
        raise GiveUpError(f"{other} images are not accepted; use PNG, JPEG or WebP", code="unsupported_image")
    raise GiveUpError("the bytes are not a recognisable image", code="not_an_image")


def _other_format(prefix: bytes) -> str | None:
    """The name of another format Pillow recognises from these first bytes (only for a precise message)."""
    Image.init()
    for name, (_factory, accept) in Image.OPEN.items():
        if name in CONTENT_TYPES or accept is None:
            continue
        try:
            verdict = accept(prefix)
        except Exception:  # noqa: S112 - a plugin's sniffer failing on odd bytes just means "not this format"
            continue
        if verdict is True:
            return name
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size from a WebP header (simple lossy, lossless or extended), without decoding."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise GiveUpError(
            f"image is {width}x{height} ({width * height} pixels); at most {max_pixels} are allowed",
            code="too_many_pixels",
        )


def _thumbnail(image: ImageFile.ImageFile, size: int) -> bytes:
    # On an image not decoded yet, thumbnail() first asks the decoder for a smaller draft (JPEG: 1/2 to 1/8
    # scale), then reduces by whole factors before the last, small resampling.
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    try:
        small: Image.Image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block only costs the rotation
        small = image
    if small.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Deep greyscale: scale to 8 bits (convert() would clip, not scale, 16-bit values).
        small = small.convert("F").point(lambda value: value / 257).convert("L")
    alpha = small.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in small.info
    target = "RGBA" if alpha else "RGB"
    if small.mode != target:
        small = small.convert(target)
    out = io.BytesIO()
    # Method 0, the fastest encoder effort: 4x faster than method 4 at 256 px and as small within 10%
    # (docs/benchmarks.md, "Per-stage budget of one job").
    small.save(out, format="WEBP", quality=80, method=0)
    return out.getvalue()
