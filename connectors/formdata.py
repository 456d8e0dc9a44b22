"""Reading and writing webhook bodies the way PHP senders produce them (pure functions).

WordPress plugins post JSON, or an array that WordPress form-encodes with PHP's
``http_build_query``: nested arrays become bracket keys (``a[b][c]=v``, ``a[0]=x``),
``true``/``false`` become ``1``/``0`` and ``null`` is dropped. ``parse_body`` turns any of
these (and multipart forms) back into the nested dict the plugin meant, keeping literal
keys such as Gravity's ``2.3`` unchanged (only a PHP receiver turns ``.`` into ``_``).
``build_php_query`` is the inverse, for sending requests as those plugins would.

Parsing is bounded as ``connectors.bodies`` says (depth, field count) and linear in the
body: a thousand ``a[]=`` appends cost a thousand steps, not a million.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote_plus

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from bridge.errors import PayloadError

from .bodies import MAX_FIELDS, TooManyFieldsError, check_depth, check_field_count, load_json_object

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON = "application/json"

# name[seg][seg]...: a PHP array key; anything else is kept as a literal key.
_BRACKETED = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])+)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
# The keys PHP treats as integers (and so as list positions): canonical decimals only.
_INT_KEY = re.compile(r"^(?:0|[1-9][0-9]{0,17})$")


def parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The object a body carries, by its content type (parameters such as charset allowed).

    Raises PayloadError for a body that is not an object in a format we read.
    """
    mimetype, params = parse_options_header(content_type or "")
    charset = params.get("charset") or "utf-8"
    if mimetype == JSON or mimetype.endswith("+json"):
        return parse_json(body, charset)
    if mimetype == FORM:
        return parse_form(body, charset)
    if mimetype == MULTIPART:
        return parse_multipart(body, params)
    if mimetype in ("text/plain", ""):
        # CF7 to Webhook labels a custom body text/plain; a sender without a type is sniffed.
        if mimetype == "" and not body.lstrip().startswith((b"{", b"[")):
            return parse_form(body, charset)
        return parse_json(body, charset)
    raise PayloadError(f"content type {mimetype!r} is not JSON, a form or text")


def parse_json(body: bytes, charset: str = "utf-8") -> dict[str, Any]:
    return load_json_object(body, charset)


def parse_form(body: bytes, charset: str = "utf-8") -> dict[str, Any]:
    """An ``application/x-www-form-urlencoded`` body, blanks kept, PHP brackets unflattened."""
    # Counted before splitting, so a flood of empty fields costs one pass.
    check_field_count(body.count(b"&") + 1)
    try:
        pairs = parse_qsl(body.decode(charset), keep_blank_values=True, encoding=charset, errors="strict")
    except (LookupError, UnicodeDecodeError, ValueError) as exc:
        raise PayloadError("body is not a valid form-encoded body") from exc
    return unflatten_php(pairs)


def parse_multipart(body: bytes, params: Mapping[str, str]) -> dict[str, Any]:
    """The text fields of a ``multipart/form-data`` body; file parts are ignored."""
    # Files go to memory, not temp files (the body is already size-limited), and are dropped.
    parser = FormDataParser(stream_factory=lambda *_, **__: io.BytesIO(), silent=False, max_form_parts=MAX_FIELDS)
    try:
        _, form, _files = parser.parse(io.BytesIO(body), MULTIPART, len(body), dict(params))
    except RequestEntityTooLarge as exc:
        raise TooManyFieldsError(f"body has more than {MAX_FIELDS} fields") from exc
    except ValueError as exc:
        raise PayloadError("body is not a valid multipart form") from exc
    return unflatten_php(form.items(multi=True))


def unflatten_php(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Rebuild what PHP's ``$_POST`` would hold: ``a[b][c]=v`` nests, ``a[]=x`` appends.

    A later value for the same key replaces the earlier one, as in PHP. Nested arrays whose
    keys are exactly 0..n-1 become lists, which is what the sender's ``json_encode`` shows.
    """
    root: dict[str, Any] = {}
    # Each array's next append position, kept as PHP does instead of rescanning its keys.
    next_index: dict[int, tuple[dict[str, Any], int]] = {}
    for key, value in pairs:
        path = php_key_path(key)
        check_depth(len(path))
        node = root
        for part in path[:-1]:
            part = _claim_index(node, part, next_index)
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[_claim_index(node, path[-1], next_index)] = value
    return {key: _listify(value) for key, value in root.items()}


def php_key_path(key: str) -> list[str]:
    """``a[b][]`` -> ``["a", "b", ""]``; a key that is not a PHP array key stays whole."""
    match = _BRACKETED.match(key)
    if not match:
        return [key]
    return [match.group(1), *_SEGMENT.findall(match.group(2))]


def build_php_query(data: Mapping[str, Any]) -> str:
    """What PHP's ``http_build_query($data)`` sends: bracket keys, ``1``/``0`` for booleans,
    ``None`` dropped, spaces as ``+``."""
    pairs = list(_php_pairs(data, None))
    return "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs)


def flatten_dotted(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"names": {"first_name": "Jane"}}`` -> ``{"names.first_name": "Jane"}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dotted(value, name + "."))
        else:
            flat[name] = value
    return flat


def nest_dotted(values: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``flatten_dotted``: ``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    root: dict[str, Any] = {}
    for key, value in values.items():
        *parents, last = key.split(".")
        node = root
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value
    return root


def _php_pairs(value: Any, name: str | None) -> Iterable[tuple[str, str]]:
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        if value is not None and name is not None:
            yield name, ("1" if value else "0") if isinstance(value, bool) else str(value)
        return
    for key, child in items:
        yield from _php_pairs(child, str(key) if name is None else f"{name}[{key}]")


def _claim_index(node: dict[str, Any], part: str, next_index: dict[int, tuple[dict[str, Any], int]]) -> str:
    """The key ``part`` stands for in ``node`` (``""`` appends), noting integer keys as PHP does:
    an append goes after the highest integer key so far."""
    # The node rides along with its count so its id cannot be reused by a later array.
    after = next_index.get(id(node), (node, 0))[1]
    if part == "":
        part = str(after)
    elif not _INT_KEY.match(part):
        return part
    next_index[id(node)] = (node, max(after, int(part) + 1))
    return part


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    value = {k: _listify(v) for k, v in value.items()}
    if list(value) == [str(i) for i in range(len(value))]:
        return list(value.values())
    return value
