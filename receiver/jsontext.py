"""Strict JSON in, always-encodable JSON out: the one parser for request and provider bodies, the one encoder.

`loads` reads RFC 8259 JSON and refuses what no store or answer could carry back: a non-finite number
(`NaN`, `Infinity`, or `1e999`, which Python's `json` turns into `inf`), an unpaired UTF-16 surrogate
escape, nesting deeper than `MAX_JSON_DEPTH`, more than `MAX_JSON_ITEMS` values. Syntax errors are a
`ValueError`; a well-formed body holding an unrepresentable value is `UnrepresentableJSONError` (an
`InputError` naming the field, not a `ValueError`: a verified provider body holding one is recorded, not
refused, see `receiver.routes.webhooks`).

`dumps` never fails on data: a value that strict JSON cannot carry (non-finite floats, unpaired surrogates,
rows stored before these checks existed) becomes null or U+FFFD instead of an exception.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from receiver.errors import InputError

log = logging.getLogger(__name__)
MAX_JSON_DEPTH = 64  # far beyond any provider's input; deeper would reach Python's recursion limit downstream
# Values (array items, object members, containers) in one body. Parsed JSON costs ~70 bytes per value in
# memory and its own time on the event loop; provider inputs hold a few dozen. A cheap count before parsing
# keeps a 16 MB `[[],[],...]` from becoming gigabytes.
MAX_JSON_ITEMS = 100_000
_SANITIZE_DEPTH = 512  # deeper stored values (only possible before the depth check) are cut to null
_MAX_INT_BITS = 14_000
_STRING_REST = re.compile(rb'(?:[^"\\]++|\\.)*+"', re.DOTALL)  # the rest of a string after its opening quote


class JSONShapeError(ValueError):
    """Syntactically valid JSON too deep or too big to take; the message names where."""


class UnrepresentableJSONError(InputError):
    """Well-formed JSON holding a value we cannot store and serve back (non-finite number, lone surrogate)."""

    code = "malformed_json"


def loads(data: bytes | str) -> Any:
    """Parse strict JSON (bytes must be UTF-8); see the module docstring for what is refused and how."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    items = count_items(raw, limit=MAX_JSON_ITEMS)
    if items > MAX_JSON_ITEMS:
        raise JSONShapeError(f"body: holds more than {MAX_JSON_ITEMS} values")
    text = raw.decode()  # strict UTF-8 (RFC 8259): json.loads(bytes) would let encoded surrogates through
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise JSONShapeError(f"body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    check_json_value(value, surrogates="\\u" in text)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def count_items(body: bytes, *, limit: int) -> int:
    """How many values `body` holds (commas and opening brackets outside strings), counting stops past `limit`.

    C-speed `bytes.count` on the whole body first; only a body whose strings may hold commas or brackets
    is walked string by string (at most about `2 * limit` steps)."""
    total = body.count(b",") + body.count(b"[") + body.count(b"{")
    if total <= limit:
        return total
    pos, count = 0, 0
    while True:
        quote = body.find(b'"', pos)
        stop = len(body) if quote < 0 else quote
        count += body.count(b",", pos, stop) + body.count(b"[", pos, stop) + body.count(b"{", pos, stop)
        if count > limit or quote < 0:
            return count
        rest = _STRING_REST.match(body, quote + 1)
        if rest is None:
            return count  # an unterminated string: the parser refuses the body
        pos = rest.end()


def check_json_value(value: Any, *, surrogates: bool) -> None:
    """Refuse nesting deeper than `MAX_JSON_DEPTH` (JSONShapeError), and (UnrepresentableJSONError) non-finite
    numbers and, when `surrogates`, strings holding an unpaired `\\ud800`-`\\udfff` escape."""
    # Each entry: (value, depth, where) with `where` a (parent, key) chain, formatted only for an error.
    pending: list[tuple[Any, int, Any]] = [(value, 0, None)]
    while pending:
        item, depth, where = pending.pop()
        if isinstance(item, str):
            if surrogates and not item.isascii() and not _encodable(item):
                raise UnrepresentableJSONError(f"{_path(where)}: holds an unpaired UTF-16 surrogate escape")
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise UnrepresentableJSONError(f"{_path(where)}: is not a finite number (too large for a double)")
            continue
        if not isinstance(item, dict | list):
            continue
        if depth >= MAX_JSON_DEPTH:
            raise JSONShapeError(f"{_path(where)}: nested deeper than {MAX_JSON_DEPTH} levels")
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if surrogates and isinstance(key, str) and not key.isascii() and not _encodable(key):
                raise UnrepresentableJSONError(f"{_path(where)}: a key holds an unpaired UTF-16 surrogate escape")
            pending.append((child, depth + 1, (where, key)))


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _path(where: Any) -> str:
    """`input.images[0].url` from a (parent, key) chain; `body` for the root."""
    parts: list[str] = []
    while where is not None:
        where, key = where
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(parts)).lstrip(".") or "body"


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`; never raises for what the value holds (see `sanitize`)."""
    try:
        return _encode(value)
    except (ValueError, TypeError, RecursionError, OverflowError):
        # Only data stored before the parse-time checks (or a bug) gets here; the answer must still go out.
        log.warning("a response held values strict JSON cannot carry; sent them as null / U+FFFD")
        return _encode(sanitize(value))


def dumps_text(value: Any) -> str:
    return dumps(value).decode()


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def sanitize(value: Any, depth: int = 0) -> Any:
    """`value` with non-finite floats as None, unpaired surrogates as U+FFFD, unknown types as their str."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= _MAX_INT_BITS else None  # str(int) refuses over 4300 digits
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if _encodable(value) else _replace_surrogates(value)
    if depth >= _SANITIZE_DEPTH:
        return None
    if isinstance(value, dict):
        return {_key(key): sanitize(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(item, depth + 1) for item in value]
    return _replace_surrogates(str(value))


def _key(key: Any) -> str:
    return _replace_surrogates(key if isinstance(key, str) else str(sanitize(key)))


def _replace_surrogates(text: str) -> str:
    # Through UTF-16 and back: a split pair is joined again, a lone half becomes U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
