"""The "apply the write, then drop the answer" fault: ``POST|DELETE /__sandbox/drop_answers``.

A request the knob matches is handled as usual (the write is applied and, with a state file,
saved) and then its connection is shut down before a byte of the answer leaves. The client sees
what a network failure after the server's work looks like: "Remote end closed connection without
response" (urllib3's ``ProtocolError``, http.client's ``RemoteDisconnected``), not a timeout and
not an error status. Works for every route: single and batch creates, upserts, Slack's
``chat.postMessage``. With ``instead: {"status": 200, "body": {...}}`` the write is applied and
that answer replaces the real one: a vendor that did the work and then said it failed.
"""

from __future__ import annotations

import socket

from flask import Response, jsonify, request
from flask.typing import ResponseReturnValue

from connectors.sandbox.state import AnswerDrop, state


def control_add_answer_drop() -> ResponseReturnValue:
    """``{"path": "/crm/v3/objects/deals", "method": "POST", "times": 1, "exact": false, "instead": null}``."""
    body = request.get_json(silent=True)
    try:
        if not isinstance(body, dict) or not str(body.get("path") or "").startswith("/"):
            raise ValueError("a path starting with / is required")
        times = int(body.get("times", 1))
        if not 1 <= times <= 1000:
            raise ValueError("times must be 1-1000")
        instead = body.get("instead")
        if instead is not None and not (isinstance(instead, dict) and 100 <= int(instead.get("status", 0)) <= 599):
            raise ValueError("instead needs an HTTP status (100-599) and may have a JSON body")
        drop = AnswerDrop(
            path=str(body["path"]),
            method=str(body["method"]).upper() if body.get("method") else None,
            remaining=times,
            exact=bool(body.get("exact", False)),
            instead=(int(instead["status"]), instead.get("body")) if instead is not None else None,
        )
    except (ValueError, TypeError) as exc:
        return jsonify({"ok": False, "error": f"bad input: {exc}"}), 400
    with state().lock:
        state().answer_drops.append(drop)
    return jsonify({"ok": True}), 201


def control_clear_answer_drops() -> ResponseReturnValue:
    with state().lock:
        state().answer_drops.clear()
    return jsonify({"ok": True})


def drop_answer(response: Response) -> Response:
    """After-request hook, run last (after the state is saved): close the connection unanswered."""
    if request.path.startswith("/__sandbox"):
        return response
    with state().lock:
        drop = state().take_answer_drop(request.method, request.path)
    if drop is not None and drop.instead is not None:
        replaced = jsonify(drop.instead[1])
        replaced.status_code = drop.instead[0]
        return replaced
    sock = request.environ.get("werkzeug.socket")
    if drop is not None and isinstance(sock, socket.socket):
        # The server's write of the answer then fails with a broken pipe, which werkzeug treats
        # as a client that went away: nothing is sent, and the client reads end-of-file.
        sock.shutdown(socket.SHUT_RDWR)
    return response
