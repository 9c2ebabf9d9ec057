"""Provider adapters, one module per hosted API (`base` holds the interface they share).

What a client needs to know about a provider before it talks to the server lives here, importable without
any adapter (or httpx): the input field holding the image to edit. Each adapter's `image_field` is its entry.
"""

from __future__ import annotations

DEFAULT_IMAGE_FIELD = "image"
IMAGE_FIELDS: dict[str, str] = {
    "fal": "image_url",
    "wavespeed": DEFAULT_IMAGE_FIELD,
    "stepfun": DEFAULT_IMAGE_FIELD,
    "modelverse": DEFAULT_IMAGE_FIELD,
}


def image_field_of(provider: str) -> str:
    """The input field holding the image to edit for `provider` (`image` for a name we do not know: the
    server names an unknown provider when the job is created)."""
    return IMAGE_FIELDS.get(provider, DEFAULT_IMAGE_FIELD)
