"""Request bodies read whole or refused: intake's one body reader, for every route that takes one.

Read here rather than through ``request.get_data``, which silently stops a chunked body at
the limit and hands on what a sender that hung up managed to send.
"""

from __future__ import annotations

from typing import Any

from werkzeug.wsgi import get_content_length

from .errors import BodyTooLargeError, PayloadError

READ_CHUNK = 64 * 1024
# How much of an oversized body to swallow before answering 413 (a sender still writing
# into a closed socket sees a reset instead of the answer).
DRAIN_BYTES = 4 * 1024 * 1024


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The whole request body, or an IntakeError: over ``limit`` 413, cut short or garbled 400.

    Read here rather than through ``request.get_data``, which silently stops a chunked body
    at the limit and hands on what a sender that hung up managed to send.
    """
    length = get_content_length(environ)
    if length is None and "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        # RFC 9112 §6.3: a request with neither header has no body; never wait for one.
        return b""
    if length is not None and length > limit:
        if length <= DRAIN_BYTES:
            # Swallowed, so the sender is still listening when the 413 comes.
            _read_up_to(environ["wsgi.input"], length)
        raise BodyTooLargeError(f"body is over {limit} bytes")
    if length is None and not environ.get("wsgi.input_terminated"):
        raise PayloadError("a chunked body needs a server that decodes it (leadbridge serve)")
    want = limit + 1 if length is None else length
    body = _read_up_to(environ["wsgi.input"], want)
    if length is not None and len(body) < length:
        raise PayloadError("the body ended before its Content-Length: the sender hung up")
    if len(body) > limit:
        # Read on a little, so the sender is still listening when the 413 comes.
        _read_up_to(environ["wsgi.input"], DRAIN_BYTES)
        raise BodyTooLargeError(f"body is over {limit} bytes")
    return body


def _read_up_to(stream: Any, size: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        try:
            data = stream.read(min(READ_CHUNK, size - got))
        except Exception as exc:  # each server frames bodies its own way (OSError, gunicorn's ParseException)
            raise PayloadError(f"the body could not be read ({type(exc).__name__})") from exc
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)
