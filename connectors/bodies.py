"""Bounded reading of webhook bodies: the one place every source turns JSON into objects.

A hostile sender can make a small body expensive: JSON nested ten thousand levels deep
(``RecursionError``), an integer of five thousand digits (Python refuses to convert
more than 4,300), or a flood of tiny fields. Every source parses through ``load_json``
(and form bodies through ``connectors.formdata``, which checks the same limits), so:

- nesting deeper than ``MAX_DEPTH`` answers 400 ``too_deep``;
- more than ``MAX_FIELDS`` values (object members, list items and form fields counted
  together) answers 400 ``too_many_fields``;
- an integer longer than ``MAX_INT_DIGITS`` digits is not a number any form sends: 400
  ``number_too_long``.

Each check is one pass over the text or the parsed object, so the cost stays linear in
the body. Intake refuses bodies over ``server.max_body_bytes`` before any of this runs.
"""

from __future__ import annotations

import json
from itertools import repeat
from typing import Any

from bridge.errors import PayloadError

# Real payloads: a Typeform response with every answer type is 8 deep and ~200 values.
MAX_DEPTH = 32
MAX_FIELDS = 5000
# int64 ids have 19 digits; anything much longer is an attack on int() (4,300-digit limit).
MAX_INT_DIGITS = 100


class LimitError(PayloadError):
    """A body over one of the parsing limits (400, like any unreadable body)."""


class TooDeepError(LimitError):
    code = "too_deep"


class TooManyFieldsError(LimitError):
    code = "too_many_fields"


class NumberTooLongError(LimitError):
    code = "number_too_long"


def load_json(body: bytes | str, charset: str = "utf-8") -> Any:
    """The JSON value a body holds, within the limits above; PayloadError otherwise."""
    try:
        text = body.decode(charset) if isinstance(body, bytes) else body
        value = json.loads(text, parse_int=_bounded_int)
    except RecursionError as exc:
        # The C decoder stops at the interpreter's recursion limit, long before memory runs out.
        raise TooDeepError(f"body is nested more than {MAX_DEPTH} levels deep") from exc
    except (LookupError, ValueError) as exc:
        # ValueError covers JSONDecodeError and every codec's UnicodeError (a charset=idna body).
        raise PayloadError("body is not valid JSON") from exc
    check_shape(value)
    return value


def load_json_object(body: bytes | str, charset: str = "utf-8") -> dict[str, Any]:
    value = load_json(body, charset)
    if not isinstance(value, dict):
        raise PayloadError("body is JSON but not an object")
    return value


def check_shape(value: Any) -> None:
    """Raise TooDeepError or TooManyFieldsError for a parsed value over the limits (no recursion)."""
    seen = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        node, depth = todo.pop()
        seen += 1
        if seen > MAX_FIELDS:
            raise TooManyFieldsError(f"body has more than {MAX_FIELDS} fields")
        if isinstance(node, (dict, list)):
            # The outermost object is depth 1, as a form key ``a[b]`` makes depth 2.
            check_depth(depth)
            # zip and repeat, not a generator: the same order, without Python code per child.
            todo.extend(zip(node.values() if isinstance(node, dict) else node, repeat(depth + 1)))


def check_field_count(count: int) -> None:
    if count > MAX_FIELDS:
        raise TooManyFieldsError(f"body has more than {MAX_FIELDS} fields")


def check_depth(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TooDeepError(f"body is nested more than {MAX_DEPTH} levels deep")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise NumberTooLongError(f"body holds an integer longer than {MAX_INT_DIGITS} digits")
    return int(text)
