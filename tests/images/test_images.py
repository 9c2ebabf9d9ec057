"""Image checks on untrusted bytes: allowed formats, the pixel cap before decoding, corrupt files, thumbnails."""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib

import pytest
from PIL import Image

from receiver.errors import GiveUpError
from receiver.images.checks import StoredImageFacts, check_image, inspect_image, make_thumbnail


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int) -> Image.Image:
    """An image that does not compress well, so that cutting its file short loses pixels."""
    return Image.effect_noise((width, height), 64).convert("RGB")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def png_bomb(side: int = 20_000) -> bytes:
    """A complete, valid 1-bit PNG of side x side pixels (400 M pixels for 20000): about 50 KB on disk."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """An extended-format (VP8X) WebP header claiming a width x height canvas."""
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_the_bomb_is_small_on_disk() -> None:
    """The 400-megapixel PNG used below is a real PNG under 100 KB (that is what makes it a bomb)."""
    data = png_bomb()
    assert len(data) < 100_000
    assert data[16:24] == struct.pack(">II", 20_000, 20_000)


@pytest.mark.parametrize(
    "data",
    [png_bomb(), jpeg_declaring(30_000, 30_000), webp_declaring(16_000, 16_000)],
    ids=["png-400mp", "jpeg-900mp", "webp-256mp"],
)
def test_decompression_bombs_are_refused_from_the_header(data: bytes) -> None:
    """Images declaring more than max_pixels are refused with too_many_pixels, and no Pillow warning escapes."""
    with pytest.raises(GiveUpError) as caught:
        check_image(data)
    assert caught.value.code == "too_many_pixels"
    assert "at most 50000000" in caught.value.message


@pytest.mark.parametrize(("max_pixels", "allowed"), [(399, False), (400, True)], ids=["one-under", "exactly"])
def test_max_pixels_is_inclusive(max_pixels: int, allowed: bool) -> None:
    """A 20x20 image passes a 400-pixel cap and fails a 399-pixel one."""
    data = encode(Image.new("RGB", (20, 20)), "PNG")
    if allowed:
        assert check_image(data, max_pixels=max_pixels) == ("image/png", 20, 20)
    else:
        with pytest.raises(GiveUpError) as caught:
            check_image(data, max_pixels=max_pixels)
        assert caught.value.code == "too_many_pixels"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"], ids=str.lower)
def test_pillows_global_bomb_limit_never_fires(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """Only our max_pixels counts: with Pillow's own limit set absurdly low, nothing is warned or raised."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = encode(noise(40, 30), fmt)  # 1200 pixels: more than twice Pillow's limit
    assert check_image(data, max_pixels=2000)[1:] == (40, 30)
    thumbnail = make_thumbnail(data, size=16, max_pixels=2000)
    monkeypatch.undo()
    assert Image.open(io.BytesIO(thumbnail)).size == (16, 12)


def test_pillows_hard_bomb_limit_on_webp_is_too_many_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The WebP plugin also enforces twice Pillow's limit itself: that refusal is too_many_pixels, not a crash."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(GiveUpError) as caught:
        check_image(encode(noise(40, 30), "WEBP"), max_pixels=2000)
    assert caught.value.code == "too_many_pixels"


@pytest.mark.parametrize(
    ("fmt", "content_type", "mode"),
    [
        ("PNG", "image/png", "RGB"),
        ("PNG", "image/png", "RGBA"),
        ("PNG", "image/png", "P"),
        ("PNG", "image/png", "I;16"),
        ("JPEG", "image/jpeg", "RGB"),
        ("JPEG", "image/jpeg", "CMYK"),
        ("WEBP", "image/webp", "RGB"),
        ("WEBP", "image/webp", "RGBA"),
    ],
    ids=["png", "png-rgba", "png-palette", "png-16bit", "jpeg", "jpeg-cmyk", "webp", "webp-rgba"],
)
def test_png_jpeg_and_webp_are_accepted(fmt: str, content_type: str, mode: str) -> None:
    """PNG, JPEG and WebP images (in their usual modes) give their content type and size."""
    data = encode(Image.new(mode, (48, 36)), fmt)
    assert check_image(data) == (content_type, 48, 36)


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"), ("ICO", "ICO")],
    ids=["gif", "bmp", "tiff", "ico"],
)
def test_other_image_formats_are_unsupported(fmt: str, name: str) -> None:
    """Images in formats other than PNG, JPEG and WebP are refused with unsupported_image, naming the format."""
    with pytest.raises(GiveUpError) as caught:
        check_image(encode(Image.new("RGB", (16, 16)), fmt))
    assert caught.value.code == "unsupported_image"
    assert name in caught.value.message


def truncated(fmt: str) -> bytes:
    data = encode(noise(200, 150), fmt)
    return data[: len(data) // 2]


def corrupted_png() -> bytes:
    data = bytearray(encode(noise(200, 150), "PNG"))
    start = data.index(b"IDAT") + 200
    data[start : start + 64] = bytes(64)  # zeros in the middle of the deflate stream
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        random.Random(7).randbytes(4096),
        b"",
        b"<html>not an image</html>",
        truncated("PNG"),
        truncated("JPEG"),
        truncated("WEBP"),
        corrupted_png(),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    ],
    ids=["random", "empty", "html", "truncated-png", "truncated-jpeg", "truncated-webp", "corrupt-png", "bad-header"],
)
def test_unreadable_bytes_are_not_an_image(data: bytes) -> None:
    """Random bytes, truncated or corrupt files are refused with not_an_image (every pixel is decoded to tell)."""
    with pytest.raises(GiveUpError) as caught:
        check_image(data)
    assert caught.value.code == "not_an_image"


@pytest.mark.parametrize(
    ("size", "mode", "fmt", "expected_size", "expected_mode"),
    [
        ((600, 300), "RGB", "PNG", (256, 128), "RGB"),
        ((300, 600), "RGB", "JPEG", (128, 256), "RGB"),
        ((60, 30), "RGBA", "PNG", (60, 30), "RGBA"),
        ((1024, 1024), "P", "PNG", (256, 256), "RGB"),
        ((512, 100), "RGBA", "WEBP", (256, 50), "RGBA"),
    ],
    ids=["landscape", "portrait-jpeg", "small-kept", "palette", "webp-alpha"],
)
def test_thumbnails_are_webp_within_the_size(
    size: tuple[int, int], mode: str, fmt: str, expected_size: tuple[int, int], expected_mode: str
) -> None:
    """A thumbnail is a WebP at most 256 px on its longer side, aspect kept, never enlarged, alpha kept."""
    thumbnail = make_thumbnail(encode(Image.new(mode, size), fmt))
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert (image.format, image.size, image.mode) == ("WEBP", expected_size, expected_mode)


def test_thumbnail_size_is_configurable_and_follows_exif_orientation() -> None:
    """`size` bounds the thumbnail; a JPEG tagged 'rotate 90' gives an upright (portrait) thumbnail."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored landscape pixels are shown rotated to portrait
    data = encode(Image.new("RGB", (300, 100)), "JPEG", exif=exif)
    with Image.open(io.BytesIO(make_thumbnail(data, size=64))) as image:
        assert image.size == (21, 64)


def test_inspect_image_checks_and_thumbnails_in_one_go() -> None:
    """`inspect_image` gives the same facts as `check_image` and the same kind of thumbnail."""
    data = encode(Image.new("RGB", (640, 480)), "JPEG")
    facts, thumbnail = inspect_image(data, thumbnail_size=100)
    assert facts == StoredImageFacts("image/jpeg", 640, 480)
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert (image.format, image.size) == ("WEBP", (100, 75))


def test_thumbnails_refuse_what_check_image_refuses() -> None:
    """`make_thumbnail` applies the same checks: a bomb is refused before decoding."""
    with pytest.raises(GiveUpError) as caught:
        make_thumbnail(png_bomb())
    assert caught.value.code == "too_many_pixels"
