"""Hostile and malformed input: refused with a 4xx in the usual JSON shape, never a 500,
never a partial lead, never personal data in a log line; what gets through is clean.

The corpus is a table per class (parsing limits, broken bodies, signature headers); each
case goes over a real socket to the served app and is followed by a normal request.
"""

from __future__ import annotations

import pytest

from bridge.errors import PayloadError
from connectors.bodies import MAX_DEPTH, MAX_FIELDS, TooDeepError, TooManyFieldsError, load_json_object
from connectors.formdata import parse_body, unflatten_php

FORM = "application/x-www-form-urlencoded"

# -- the parser alone ---------------------------------------------------------------

PARSE_CASES = [
    ("json nested 10,000 deep", b"[" * 10_000 + b"]" * 10_000, "application/json", TooDeepError),
    ("json object nested past the limit", b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "application/json", TooDeepError),
    ("json 5,000-digit integer", b'{"n":' + b"7" * 5000 + b"}", "application/json", PayloadError),
    ("json too many values", b'{"a":[' + b"0," * MAX_FIELDS + b"0]}", "application/json", TooManyFieldsError),
    ("json not an object", b"[1, 2]", "application/json", PayloadError),
    ("json invalid utf-8", b'{"a": "\xff"}', "application/json", PayloadError),
    ("php brackets 10,000 deep", b"a" + b"[x]" * 10_000 + b"=1", FORM, TooDeepError),
    ("10,000 empty appends", b"a[]=&" * 10_000, FORM, TooManyFieldsError),
    ("form invalid utf-8", b"a=%ff", FORM, PayloadError),
    ("multipart too many parts", None, "multipart/form-data; boundary=x", TooManyFieldsError),
]


def multipart(parts: int) -> bytes:
    one = b'--x\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
    return one * parts + b"--x--\r\n"


@pytest.mark.parametrize(("body", "content_type", "error"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_hostile_bodies_are_refused_by_the_parser(body: bytes | None, content_type: str, error: type[Exception]) -> None:
    with pytest.raises(error) as raised:
        parse_body(multipart(MAX_FIELDS + 1) if body is None else body, content_type)
    assert raised.value.status == 400  # type: ignore[attr-defined]


def test_the_limits_leave_real_payloads_alone() -> None:
    deep = b'{"a":' * (MAX_DEPTH - 1) + b"1" + b"}" * (MAX_DEPTH - 1)
    assert load_json_object(deep)["a"]["a"]["a"] is not None
    assert load_json_object(b'{"form_id": 4000000000000000001}') == {"form_id": 4000000000000000001}
    key = "a" + "[x]" * (MAX_DEPTH - 1)
    assert parse_body(f"{key}=1".encode(), FORM)["a"]["x"]["x"] is not None


def test_php_appends_are_linear_and_keep_php_order() -> None:
    pairs = [("a[]", "x"), ("a[5]", "y"), ("a[]", "z"), ("a[012]", "w"), ("b[2][]", "p"), ("b[2][]", "q")]
    assert unflatten_php(pairs) == {"a": {"0": "x", "5": "y", "6": "z", "012": "w"}, "b": {"2": ["p", "q"]}}
    # Thousands of appends make one list of that length (PHP's order), in one pass.
    many = unflatten_php([("a[]", str(i)) for i in range(MAX_FIELDS)])
    assert many["a"][:3] == ["0", "1", "2"] and len(many["a"]) == MAX_FIELDS
