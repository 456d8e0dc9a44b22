"""How long a 256 KiB body takes to parse, hostile or not; run with ``python -m bench.parse``.

Each hostile class from issue 9 (deep nesting, huge integers, floods of fields, PHP
bracket keys, multipart parts) is built to the intake's body limit and parsed the way
intake parses it (``connectors.formdata.parse_body``, which every source shares), refused
or not. The baseline is a benign 256 KiB lead (one long message). The promise: every
class well under a second, so a hostile body costs about what a benign one does.
Prints one line per class (best of several runs) and exits 1 if any class misses the goal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from bridge.errors import PayloadError
from connectors.bodies import MAX_FIELDS
from connectors.formdata import parse_body

SIZE = 256 * 1024
GOAL_SECONDS = 1.0
RUNS = 5
JSON, FORM = "application/json", "application/x-www-form-urlencoded"


def fill(unit: bytes, head: bytes = b"", tail: bytes = b"") -> bytes:
    """``head`` + ``unit`` repeated + ``tail``, about SIZE bytes in all."""
    return head + unit * ((SIZE - len(head) - len(tail)) // len(unit)) + tail


def benign_json() -> bytes:
    lead = {"email": "jane@acme-plumbing.com", "name": "Jane Doe", "message": ""}
    lead["message"] = "x" * (SIZE - len(json.dumps(lead)))
    return json.dumps(lead).encode()


def deep_json() -> bytes:
    half = SIZE // 2
    return b"[" * half + b"]" * half


def appends_under_limit() -> bytes:
    # Just under the field limit, padded to size: parsed in full, so this is the linear cost.
    pad = SIZE - 5 * (MAX_FIELDS - 2) - 8
    return b"a[]=&" * (MAX_FIELDS - 2) + b"message=" + b"x" * pad


def members() -> bytes:
    names = (b'"k%d":0' % i for i in range(SIZE))
    body = b"{"
    while len(body) < SIZE - 16:
        body += next(names) + b","
    return body + b'"z":0}'


PART = b'--x\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'


def multipart_parts(count: int | None = None) -> bytes:
    if count is None:
        return fill(PART, tail=b"--x--\r\n")
    # Just under the limit, the last part padded to size: the parser's full cost.
    pad = PART.replace(b"\r\nv", b"\r\n" + b"v" * (SIZE - len(PART) * count))
    return PART * (count - 1) + pad + b"--x--\r\n"


CLASSES: list[tuple[str, str, Callable[[], bytes]]] = [
    ("benign JSON (baseline)", JSON, benign_json),
    ("benign form", FORM, lambda: b"email=jane%40acme-plumbing.com&message=" + b"x" * (SIZE - 40)),
    ("JSON nested 128 Ki deep", JSON, deep_json),
    ("JSON object nested 32 Ki deep", JSON, lambda: fill(b'{"a":', tail=b"1")),
    ("JSON 4,000-digit integers", JSON, lambda: fill(b"9" * 4000 + b",", b"[", b"0]")),
    ("JSON 128 Ki list items", JSON, lambda: fill(b"0,", b"[", b"0]")),
    ("JSON 30 Ki members", JSON, members),
    ("form a[]=& x 52 Ki", FORM, lambda: fill(b"a[]=&")),
    (f"form a[]=& x {MAX_FIELDS - 2} + padding", FORM, appends_under_limit),
    ("form bracket key 85 Ki deep", FORM, lambda: fill(b"[x]", b"a", b"=1")),
    ("multipart 5 Ki parts", "multipart/form-data; boundary=x", multipart_parts),
    (f"multipart {MAX_FIELDS - 2} parts + padding", "multipart/form-data; boundary=x", lambda: multipart_parts(MAX_FIELDS - 2)),
]


def best_of(body: bytes, content_type: str) -> tuple[float, str]:
    """Fastest of RUNS parses, and what the parser said (``ok`` or the refusal's code)."""
    best, outcome = float("inf"), ""
    for _ in range(RUNS):
        start = time.perf_counter()
        try:
            parse_body(body, content_type)
            outcome = "ok"
        except PayloadError as exc:
            outcome = exc.code
        best = min(best, time.perf_counter() - start)
    return best, outcome


def main() -> int:
    print(f"parse: {SIZE // 1024} KiB bodies, best of {RUNS}; goal: each under {GOAL_SECONDS:g} s")
    baseline = 0.0
    missed = 0
    for name, content_type, build in CLASSES:
        body = build()
        seconds, outcome = best_of(body, content_type)
        baseline = baseline or seconds
        ok = seconds < GOAL_SECONDS
        missed += not ok
        print(
            f"  {name:<34} {len(body) / 1024:6.0f} KiB {seconds * 1000:9.2f} ms"
            f"  x{seconds / baseline:7.1f} of baseline  {outcome:<16} {'ok' if ok else 'MISSED'}"
        )
    print(f"parse: {len(CLASSES) - missed} of {len(CLASSES)} classes under {GOAL_SECONDS:g} s")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
