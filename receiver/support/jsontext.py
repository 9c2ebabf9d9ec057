"""Strict JSON in, always-encodable JSON out: the one parser for request and provider bodies, the one encoder.

`loads` reads RFC 8259 JSON and refuses what no store or answer could carry back: a number no double can
hold (`1e999`, which Python's `json` turns into `inf`, an integer beyond about 1.8e308, and the non-JSON
`NaN` and `Infinity`), an unpaired UTF-16 surrogate escape, nesting deeper than `MAX_JSON_DEPTH`, more than
`MAX_JSON_ITEMS` values. Integers are bounded by the double range because every JSON reader that maps
numbers to doubles (browsers, most SDKs) would read a larger one as Infinity, and `float()` of it raises;
large integers within that range (fal's 18-digit seeds) stay exact. Syntax errors are a `ValueError`; a
well-formed body holding an unrepresentable value is `UnrepresentableJSONError` (an `InputError` naming the
field, not a `ValueError`: a verified provider body holding one is recorded, not refused, see
`receiver.web.routes.webhooks`).

`dumps` never fails on data: a value that strict JSON cannot carry (non-finite floats, unpaired surrogates,
rows stored before these checks existed) becomes null or U+FFFD instead of an exception.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
import secrets
import sys
import threading
from collections.abc import Iterator
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
_MAX_DOUBLE = int(sys.float_info.max)  # integers beyond this are unrepresentable, like 1e999
_MAX_INT_CHARS = len(str(_MAX_DOUBLE)) + 1  # longer digit strings are beyond it (sign included)
SLICE_CHARS = 256 * 1024  # strings longer than this are encoded in slices of this size
SLICE_BYTES = 256 * 1024  # longer strings are decoded in slices of this size
_STRING_RUN = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)  # string content up to its closing quote
_CONTROL = re.compile(rb"[\x00-\x1f]")
_DECODERS = threading.local()


class JSONShapeError(ValueError):
    """Syntactically valid JSON too deep or too big to take; the message names where."""


class UnrepresentableJSONError(InputError):
    """Well-formed JSON holding a value we cannot store and serve back (non-finite number, lone surrogate)."""

    code = "malformed_json"


def loads(data: bytes | str) -> Any:
    """Parse strict JSON (bytes must be UTF-8); see the module docstring for what is refused and how.

    Long string values are taken out before `json.loads` and decoded slice by slice (`lift_strings`): one
    C call over a 16 MB string would hold the GIL, and so stall the event loop, for its whole length."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    items = count_items(raw, limit=MAX_JSON_ITEMS)
    if items > MAX_JSON_ITEMS:
        raise JSONShapeError(f"body: holds more than {MAX_JSON_ITEMS} values")
    lifted: dict[str, str] = {}
    if len(raw) > SLICE_BYTES:
        raw, lifted = lift_strings(raw)
    text = raw.decode()  # strict UTF-8 (RFC 8259): json.loads(bytes) would let encoded surrogates through
    try:
        value = _decoder().decode(text)
    except RecursionError:
        raise JSONShapeError(f"body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    if isinstance(value, str) and value in lifted:
        return lifted[value]
    check_json_value(value, surrogates="\\u" in text, lifted=lifted)
    return value


def lift_strings(raw: bytes) -> tuple[bytes, dict[str, str]]:
    """`raw` with each long string value (no escapes, not a key) replaced by a short placeholder string,
    and the placeholders' values, decoded as strict UTF-8 in slices. Anything else stays for `json.loads`."""
    nonce = secrets.token_hex(8)
    parts: list[bytes] = []
    lifted: dict[str, str] = {}
    pos = done = 0
    while True:
        start = raw.find(b'"', pos)
        end = -1 if start < 0 else _string_end(raw, start + 1)
        if end < 0:
            break
        pos = end + 1
        if end - start <= SLICE_BYTES or _is_key(raw, pos) or not _plain(raw, start + 1, end):
            continue
        placeholder = f"\x00lifted-{nonce}-{len(lifted)}"
        lifted[placeholder] = _decode_sliced(raw, start + 1, end)
        parts += [raw[done:start], b'"\\u0000' + placeholder[1:].encode() + b'"']
        done = pos
    if not lifted:
        return raw, lifted
    return b"".join([*parts, raw[done:]]), lifted


def _string_end(raw: bytes, pos: int) -> int:
    """Index of the quote closing the string whose content starts at `pos`, or -1; slice by slice."""
    while pos < len(raw):
        run = _STRING_RUN.match(raw, pos, min(len(raw), pos + SLICE_BYTES))
        end = run.end() if run else pos
        if end < len(raw) and raw[end] == 0x22:  # '"'
            return end
        if end == pos and raw[end] != 0x5C:  # neither the end nor an escape cut at the slice edge
            return -1
        pos = end if end > pos else pos + 2
    return -1


def _is_key(raw: bytes, pos: int) -> bool:
    """Whether the string ending before `pos` is an object key (or may be: a long blank run, the body's end)."""
    after = raw[pos : pos + 64].lstrip(b" \t\r\n")
    return not after or after.startswith(b":")


def _plain(raw: bytes, start: int, end: int) -> bool:
    """No escapes and no raw control characters (which JSON refuses in strings) between start and end."""
    if raw.find(b"\\", start, end) >= 0:
        return False
    return not any(_CONTROL.search(raw, at, min(end, at + SLICE_BYTES)) for at in range(start, end, SLICE_BYTES))


def _decode_sliced(raw: bytes, start: int, end: int) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces = [decoder.decode(raw[at : min(end, at + SLICE_BYTES)]) for at in range(start, end, SLICE_BYTES)]
    pieces.append(decoder.decode(b"", final=True))
    return "".join(pieces)


def _decoder() -> json.JSONDecoder:
    """This thread's decoder: built once (`json.loads` with hooks builds one per call, 2 us), and per thread
    because the C scanner's key memo is shared state between calls."""
    decoder: json.JSONDecoder | None = getattr(_DECODERS, "decoder", None)
    if decoder is None:
        decoder = _DECODERS.decoder = json.JSONDecoder(parse_constant=_constant, parse_int=_parse_int)
    return decoder


def _constant(name: str) -> float:
    """`NaN`, `Infinity`, `-Infinity` (not JSON) as the floats they name: the walk refuses them naming the field."""
    return float(name)


def _parse_int(digits: str) -> int | float:
    """An integer, or infinity past the double range: the walk then refuses it naming the field, before
    `int()` spends time on (or refuses, past 4300 digits) a number nothing could use."""
    if len(digits) > _MAX_INT_CHARS:
        return -math.inf if digits.startswith("-") else math.inf
    value = int(digits)
    if abs(value) <= _MAX_DOUBLE:
        return value
    return math.inf if value > 0 else -math.inf


def finite_float(value: Any) -> float | None:
    """`value` as a finite float when it is a number a double holds (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


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
        end = -1 if quote < 0 else _string_end(body, quote + 1)
        if count > limit or end < 0:
            return count  # past the limit, at the end, or an unterminated string (the parser refuses it)
        pos = end + 1


def check_json_value(value: Any, *, surrogates: bool, lifted: dict[str, str] | None = None) -> None:
    """Refuse nesting deeper than `MAX_JSON_DEPTH` (JSONShapeError), and (UnrepresentableJSONError) non-finite
    numbers (`loads` reads integers past the double range as infinity) and, when `surrogates`, strings holding
    an unpaired `\\ud800`-`\\udfff` escape."""
    # Each entry: (value, depth, where) with `where` a (parent, key) chain, formatted only for an error.
    pending: list[tuple[Any, int, Any]] = [(value, 0, None)]
    while pending:
        item, depth, where = pending.pop()
        if isinstance(item, str):
            if surrogates and not item.isascii() and not is_encodable(item):
                raise UnrepresentableJSONError(f"{_path(where)}: holds an unpaired UTF-16 surrogate escape")
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                why = "NaN" if math.isnan(item) else "too large for a double"
                raise UnrepresentableJSONError(f"{_path(where)}: is not a finite number ({why})")
            continue
        if not isinstance(item, dict | list):
            continue
        if depth >= MAX_JSON_DEPTH:
            raise JSONShapeError(f"{_path(where)}: nested deeper than {MAX_JSON_DEPTH} levels")
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if lifted and isinstance(child, str) and child in lifted:
                item[key] = lifted[child]  # a long string taken out before parsing: already checked
                continue
            if surrogates and isinstance(key, str) and not key.isascii() and not is_encodable(key):
                raise UnrepresentableJSONError(f"{_path(where)}: a key holds an unpaired UTF-16 surrogate escape")
            pending.append((child, depth + 1, (where, key)))


def is_encodable(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (holds no unpaired surrogate)."""
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


def dumps(value: Any, *, big: bool = False) -> bytes:
    """Compact UTF-8 JSON of `value`; never raises for what the value holds (see `sanitize`).

    `big` (see `holds_big_string`) encodes long strings slice by slice: each slice holds the GIL for a
    millisecond or two instead of one call holding it for the whole string, so a worker thread doing this
    leaves the event loop free to run in between."""
    encode = _encode_sliced if big else _encode
    try:
        return encode(value)
    except (ValueError, TypeError, RecursionError, OverflowError, UnicodeEncodeError):
        # Only data stored before the parse-time checks (or a bug) gets here; the answer must still go out.
        log.warning("a response held values strict JSON cannot carry; sent them as null / U+FFFD")
        return encode(sanitize(value))


def dumps_text(value: Any) -> str:
    return dumps(value).decode()


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def holds_big_string(value: Any, depth: int = 0) -> bool:
    """Whether `value` holds a string longer than `SLICE_CHARS` (a walk; cheap for API-sized values)."""
    if isinstance(value, str):
        return len(value) > SLICE_CHARS
    if depth >= _SANITIZE_DEPTH:
        return False
    if isinstance(value, dict):
        return any(holds_big_string(item, depth + 1) for item in value.values())
    if isinstance(value, list | tuple):
        return any(holds_big_string(item, depth + 1) for item in value)
    return False


def _encode_sliced(value: Any) -> bytes:
    return b"".join(_sliced(value, 0))


def _sliced(value: Any, depth: int) -> Iterator[bytes]:
    if isinstance(value, str) and len(value) > SLICE_CHARS:
        yield b'"'
        for start in range(0, len(value), SLICE_CHARS):
            yield _encode(value[start : start + SLICE_CHARS])[1:-1]
        yield b'"'
    elif isinstance(value, dict) and depth < _SANITIZE_DEPTH:
        yield b"{"
        for index, (key, item) in enumerate(value.items()):
            yield b"," + _encode(str(key)) + b":" if index else _encode(str(key)) + b":"
            yield from _sliced(item, depth + 1)
        yield b"}"
    elif isinstance(value, list | tuple) and depth < _SANITIZE_DEPTH:
        yield b"["
        for index, item in enumerate(value):
            if index:
                yield b","
            yield from _sliced(item, depth + 1)
        yield b"]"
    else:
        yield _encode(value)


def sanitize(value: Any, depth: int = 0) -> Any:
    """`value` with non-finite floats as None, unpaired surrogates as U+FFFD, unknown types as their str."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= _MAX_INT_BITS else None  # str(int) refuses over 4300 digits
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if is_encodable(value) else _replace_surrogates(value)
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
