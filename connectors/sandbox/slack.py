"""The Slack Web API methods leadbridge calls (``auth.test``, ``chat.postMessage`` with message
metadata, ``chat.update``, ``conversations.history``, ``conversations.open`` for DMs,
``users.lookupByEmail``), with Slack's ``ok``/``error`` envelope."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from flask import jsonify, request
from flask.typing import ResponseReturnValue

from connectors.sandbox.state import SandboxState, bearer_token, state

SLACK_MAX_BLOCKS = 50
SLACK_IDENTITY = {
    "url": "https://sandbox.slack.com/",
    "team": "Sandbox",
    "user": "leadbridge",
    "team_id": "T0SANDBOX",
    "user_id": "U0BOT",
    "bot_id": "B0BOT",
}


def slack_args() -> dict[str, Any]:
    """Arguments from the query string, a form body or a JSON body, as Slack accepts all three."""
    args: dict[str, Any] = dict(request.args.items())
    args.update(request.form.items())
    body = request.get_json(silent=True)
    if isinstance(body, dict):
        args.update(body)
    for key in ("blocks", "attachments", "metadata"):
        if isinstance(args.get(key), str):
            try:
                args[key] = json.loads(args[key])
            except ValueError:
                args[key] = None
    return args


def slack_auth_test(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, **SLACK_IDENTITY}


def slack_post_message(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    channel, blocks = args.get("channel"), args.get("blocks")
    if not channel:
        return {"ok": False, "error": "channel_not_found"}
    if not (args.get("text") or blocks or args.get("attachments")):
        return {"ok": False, "error": "no_text"}
    if blocks is not None and (not isinstance(blocks, list) or len(blocks) > SLACK_MAX_BLOCKS):
        return {"ok": False, "error": "invalid_blocks"}
    ts = sandbox.next_ts()
    sandbox.messages.append(
        {
            "channel": channel,
            "ts": ts,
            "text": args.get("text"),
            "blocks": blocks,
            "thread_ts": args.get("thread_ts"),
            "args": args,
            **({"metadata": args["metadata"]} if isinstance(args.get("metadata"), dict) else {}),
        }
    )
    message = {
        "type": "message",
        "user": SLACK_IDENTITY["user_id"],
        "bot_id": SLACK_IDENTITY["bot_id"],
        "text": args.get("text", ""),
        "ts": ts,
        **({"blocks": blocks} if blocks else {}),
        **({"thread_ts": args["thread_ts"]} if args.get("thread_ts") else {}),
    }
    return {"ok": True, "channel": channel, "ts": ts, "message": message}


def slack_update(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    """Replace a posted message's text and blocks in place, as Slack does (its ts stays)."""
    channel, ts, blocks = args.get("channel"), str(args.get("ts") or ""), args.get("blocks")
    if not channel:
        return {"ok": False, "error": "channel_not_found"}
    if not (args.get("text") or blocks):
        return {"ok": False, "error": "no_text"}
    if blocks is not None and (not isinstance(blocks, list) or len(blocks) > SLACK_MAX_BLOCKS):
        return {"ok": False, "error": "invalid_blocks"}
    message = next((m for m in sandbox.messages if m["channel"] == channel and m["ts"] == ts), None)
    if message is None:
        return {"ok": False, "error": "message_not_found"}
    message.update(text=args.get("text"), blocks=blocks, edits=int(message.get("edits") or 0) + 1)
    answer = {"text": args.get("text", ""), **({"blocks": blocks} if blocks else {})}
    return {"ok": True, "channel": channel, "ts": ts, "text": args.get("text", ""), "message": answer}


def slack_lookup_by_email(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    email = str(args.get("email", "")).strip().lower()
    for user in sandbox.slack_users:
        if str(user["email"]).lower() == email:
            return {
                "ok": True,
                "user": {
                    "id": user["id"],
                    "name": user["name"],
                    "deleted": False,
                    "profile": {"email": user["email"]},
                },
            }
    return {"ok": False, "error": "users_not_found"}


def slack_conversations_list(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    """The channels the sandbox was told about (POST /__sandbox/channels), one page."""
    return {"ok": True, "channels": list(sandbox.channels.values()), "response_metadata": {"next_cursor": ""}}


def slack_conversations_open(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    """A DM with one user (``users=U...``): its id is ``D`` + the user id's rest, the same every time,
    so a test finds the DMs a user got among the posted messages (channel ``D...``)."""
    users = [u.strip() for u in str(args.get("users") or "").split(",") if u.strip()]
    if len(users) != 1:
        return {"ok": False, "error": "not_implemented" if users else "users_list_not_supplied"}
    if not re.fullmatch(r"[UW][A-Z0-9]+", users[0]):
        return {"ok": False, "error": "user_not_found"}
    return {"ok": True, "channel": {"id": dm_channel(users[0]), "is_im": True, "user": users[0]}}


def dm_channel(user_id: str) -> str:
    return "D" + user_id[1:]


HISTORY_PAGE_MAX = 999


def slack_conversations_history(sandbox: SandboxState, args: dict[str, Any]) -> dict[str, Any]:
    """A channel's messages newest first, from ``oldest`` on, ``limit`` a page with a cursor; each
    with its ``metadata`` only when ``include_all_metadata`` is set. The channel may be named by
    its id or its name: messages keep the channel as it was posted to."""
    channel = str(args.get("channel") or "")
    names = {channel, channel.lstrip("#")}
    for name, known in sandbox.channels.items():
        if channel in (name, f"#{name}", known["id"]):
            names |= {name, f"#{name}", known["id"]}
    try:
        oldest = float(args.get("oldest") or 0)
        limit = max(1, min(int(args.get("limit") or 100), HISTORY_PAGE_MAX))
        offset = int(args.get("cursor") or 0)
    except (TypeError, ValueError):
        return {"ok": False, "error": "invalid_arguments"}
    if not channel:
        return {"ok": False, "error": "channel_not_found"}
    with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
    found = [m for m in reversed(sandbox.messages) if m["channel"] in names and float(m["ts"]) >= oldest]
    page = found[offset : offset + limit]
    messages = [
        {
            "type": "message",
            "user": SLACK_IDENTITY["user_id"],
            "bot_id": SLACK_IDENTITY["bot_id"],
            "text": m.get("text") or "",
            "ts": m["ts"],
            **({"metadata": m["metadata"]} if with_metadata and m.get("metadata") else {}),
        }
        for m in page
    ]
    more = offset + limit < len(found)
    cursor = str(offset + limit) if more else ""
    return {"ok": True, "messages": messages, "has_more": more, "response_metadata": {"next_cursor": cursor}}


SLACK_METHODS: dict[str, Callable[[SandboxState, dict[str, Any]], dict[str, Any]]] = {
    "auth.test": slack_auth_test,
    "conversations.list": slack_conversations_list,
    "conversations.open": slack_conversations_open,
    "conversations.history": slack_conversations_history,
    "chat.postMessage": slack_post_message,
    "chat.update": slack_update,
    "users.lookupByEmail": slack_lookup_by_email,
}


def slack_method(method: str) -> ResponseReturnValue:
    handler = SLACK_METHODS.get(method)
    if handler is None:
        return jsonify({"ok": False, "error": "unknown_method"}), 404
    args = slack_args()
    if not (bearer_token() or args.get("token")):
        return jsonify({"ok": False, "error": "not_authed"})
    with state().lock:
        return jsonify(handler(state(), args))
