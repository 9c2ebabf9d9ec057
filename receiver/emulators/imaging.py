"""Pure image work for the emulators: decode an input, apply an edit picked by the prompt, encode it."""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageOps

MAX_INPUT_BYTES = 20 * 1024 * 1024
MAX_INPUT_PIXELS = 4096 * 4096
JPEG_QUALITY = 90
TINT_ALPHA = 0.4

# output_format -> (Pillow format, content type, file extension)
FORMATS = {"jpeg": ("JPEG", "image/jpeg", "jpeg"), "png": ("PNG", "image/png", "png")}
TINTS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220)}
# The first pattern that matches the lower-cased prompt picks the edit; "poster" is the fallback.
EDITS = (
    ("mirror", r"\b(flip|flipped|mirror|mirrored)\b"),
    ("sketch", r"\b(sketch|pencil|drawing|line art)\b"),
    ("grayscale", r"\b(gr[ae]y|gr[ae]yscale|black and white|monochrome)\b"),
    ("blur", r"\b(blur|blurry|blurred)\b"),
    ("red", r"\bred\b"),
    ("green", r"\bgreen\b"),
    ("blue", r"\bblue\b"),
)


class ImageError(ValueError):
    """The input is not an image we can read: a broken data URI, an unknown format, too large."""


@dataclass(frozen=True, slots=True)
class EncodedImage:
    data: bytes
    width: int
    height: int
    content_type: str
    extension: str


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a `data:[<mime>][;params];base64,<data>` URI (only base64 URIs carry images)."""
    header, comma, payload = uri.partition(",")
    if not header.lower().startswith("data:") or not comma:
        raise ImageError("image_url is not a data URI")
    if not header.lower().endswith(";base64"):
        raise ImageError("data URI is not base64-encoded")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"data URI is not valid base64: {exc}") from None


def pick_edit(prompt: str) -> str:
    """The name of the edit a prompt asks for, by keyword (see `EDITS`)."""
    text = prompt.lower()
    for name, pattern in EDITS:
        if re.search(pattern, text):
            return name
    return "poster"


def open_image(data: bytes) -> Image.Image:
    """Decode `data` into an RGB image, honouring EXIF orientation; raises `ImageError`."""
    if len(data) > MAX_INPUT_BYTES:
        raise ImageError(f"input image is larger than {MAX_INPUT_BYTES} bytes")
    try:
        image = Image.open(io.BytesIO(data))
        too_large = image.width * image.height > MAX_INPUT_PIXELS
        if not too_large:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode the input image: {exc}") from None
    if too_large:
        raise ImageError(f"input image is {image.width}x{image.height}, over {MAX_INPUT_PIXELS} pixels")
    return ImageOps.exif_transpose(image).convert("RGB")


def apply_edit(image: Image.Image, edit: str) -> Image.Image:
    """A visible, deterministic change standing in for the model's edit."""
    rgb = image.convert("RGB")
    if edit == "mirror":
        return ImageOps.mirror(rgb)
    if edit == "sketch":
        edges = ImageOps.autocontrast(rgb.convert("L").filter(ImageFilter.FIND_EDGES))
        return ImageOps.invert(edges).convert("RGB")
    if edit == "grayscale":
        return ImageOps.grayscale(rgb).convert("RGB")
    if edit == "blur":
        return rgb.filter(ImageFilter.GaussianBlur(radius=max(2.0, min(rgb.size) / 64)))
    if edit in TINTS:
        return Image.blend(rgb, Image.new("RGB", rgb.size, TINTS[edit]), TINT_ALPHA)
    return ImageOps.posterize(ImageOps.autocontrast(rgb), 3)


def encode_image(image: Image.Image, output_format: str = "jpeg") -> EncodedImage:
    pil_format, content_type, extension = FORMATS[output_format]
    buffer = io.BytesIO()
    if pil_format == "JPEG":
        image.save(buffer, format=pil_format, quality=JPEG_QUALITY)
    else:
        image.save(buffer, format=pil_format)
    return EncodedImage(buffer.getvalue(), image.width, image.height, content_type, extension)


def edit_image(
    data: bytes, prompt: str, *, output_format: str = "jpeg", size: tuple[int, int] | None = None
) -> EncodedImage:
    """Decode `data`, fit it to `size` (crop to the aspect, then scale) if given, edit it, encode it."""
    image = open_image(data)
    if size is not None and image.size != size:
        image = ImageOps.fit(image, size, method=Image.Resampling.BICUBIC)
    return encode_image(apply_edit(image, pick_edit(prompt)), output_format)


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height from an image's header, without decoding its pixels; raises `ImageError`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode the input image: {exc}") from None


def decode_base64_image(value: str) -> bytes:
    """The bytes of an image sent as text: a base64 data URI or bare base64; raises `ImageError`."""
    if value.lower().startswith("data:"):
        return decode_data_uri(value)
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"image is neither a data URI nor valid base64: {exc}") from None
