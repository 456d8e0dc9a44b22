"""The sandbox app and its servers: the route table, the hooks that inject faults, check auth,
log requests and add rate-limit headers, :func:`create_sandbox_app`, :class:`SandboxServer` and
:func:`serve_forever`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Self

from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from connectors.sandbox.control import (
    CONTROL_PREFIX,
    control_add_channel,
    control_add_fault,
    control_add_owner,
    control_add_slack_user,
    control_clear_faults,
    control_log_engagement,
    control_record,
    control_reset,
    control_search_lag,
    control_state,
    control_summary,
)
from connectors.sandbox.drops import control_add_answer_drop, control_clear_answer_drops, drop_answer
from connectors.sandbox.errors import AUTH_MESSAGE, HubSpotError
from connectors.sandbox.hubspot import (
    associations_list,
    crm_batch_create,
    crm_batch_read,
    crm_batch_upsert,
    crm_create,
    crm_gdpr_delete,
    crm_get,
    crm_merge,
    crm_search,
    crm_update,
    owner_get,
    owners_list,
    pipelines_create,
    pipelines_list,
    properties_create,
    properties_list,
)
from connectors.sandbox.limits import LimitSettings, install_limits
from connectors.sandbox.limits import limits as live_limits
from connectors.sandbox.persist import StateFile
from connectors.sandbox.slack import slack_method
from connectors.sandbox.state import (
    EXTENSION_KEY,
    SandboxState,
    bearer_token,
    state,
)


def before_request() -> ResponseReturnValue | None:
    """Apply injected faults, then the vendors' auth rules, to every non-control request."""
    if request.path.startswith(CONTROL_PREFIX):
        return None
    refused = live_limits().enter(request.path, bearer_token())  # latency, then HubSpot's rate limits
    if refused is not None:
        return refused
    with state().lock:
        fault = state().take_fault(request.method, request.path)
    if fault is not None:
        # Sleep outside the lock so a slow request does not stall the others.
        time.sleep(fault.delay)
        if fault.status is not None:
            return fault.response(request.path)
    if request.path.startswith("/crm/") and not bearer_token():
        return HubSpotError(401, AUTH_MESSAGE, "INVALID_AUTHENTICATION").response()
    return None


def after_request(response: Response) -> Response:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        # Saved before the answer leaves, so an id a client has seen survives even SIGKILL.
        with state().lock:
            state().save()
    if request.path.startswith(CONTROL_PREFIX):
        return response
    live_limits().leave(request.path, response.status_code)
    with state().lock:
        state().requests.append({"method": request.method, "path": request.path, "status": response.status_code})
        # HubSpot leaves rate-limit headers off search answers; they have their own limit.
        if request.path.startswith("/crm/") and not request.path.endswith("/search") and 200 <= response.status_code < 300:
            response.headers.update(live_limits().headers(state(), bearer_token()))
    return response


def http_error(exc: HTTPException) -> ResponseReturnValue:
    """Unknown paths and methods answer in the shape of the vendor the client thinks it calls."""
    if request.path.startswith("/crm/"):
        return HubSpotError(exc.code or 500, exc.description or "error").response()
    if request.path.startswith("/api/"):
        return jsonify({"ok": False, "error": "unknown_method"}), exc.code or 500
    return exc


ROUTES: list[tuple[str, Callable[..., ResponseReturnValue], list[str]]] = [
    ("/crm/v3/objects/<object_type>", crm_create, ["POST"]),
    ("/crm/v3/objects/<object_type>/batch/create", crm_batch_create, ["POST"]),
    ("/crm/v3/objects/<object_type>/batch/upsert", crm_batch_upsert, ["POST"]),
    ("/crm/v3/objects/<object_type>/batch/read", crm_batch_read, ["POST"]),
    ("/crm/v3/objects/<object_type>/search", crm_search, ["POST"]),
    ("/crm/v3/objects/contacts/gdpr-delete", crm_gdpr_delete, ["POST"]),
    ("/crm/v3/objects/<object_type>/merge", crm_merge, ["POST"]),
    ("/crm/v3/objects/<object_type>/<object_id>", crm_get, ["GET"]),
    ("/crm/v3/objects/<object_type>/<object_id>", crm_update, ["PATCH"]),
    ("/crm/v3/properties/<object_type>", properties_list, ["GET"]),
    ("/crm/v4/objects/<object_type>/<object_id>/associations/<to_object_type>", associations_list, ["GET"]),
    ("/crm/v3/pipelines/<object_type>", pipelines_list, ["GET"]),
    ("/crm/v3/pipelines/<object_type>", pipelines_create, ["POST"]),
    ("/crm/v3/properties/<object_type>", properties_create, ["POST"]),
    # SDK v12 lists owners at ``/crm/v3/owners/`` with the trailing slash.
    ("/crm/v3/owners/", owners_list, ["GET"]),
    ("/crm/v3/owners/<owner_id>", owner_get, ["GET"]),
    ("/api/<method>", slack_method, ["GET", "POST"]),
    (f"{CONTROL_PREFIX}/", control_summary, ["GET"]),
    (f"{CONTROL_PREFIX}/state", control_state, ["GET"]),
    (f"{CONTROL_PREFIX}/<object_type>/<record_id>", control_record, ["GET"]),
    (f"{CONTROL_PREFIX}/reset", control_reset, ["POST"]),
    (f"{CONTROL_PREFIX}/faults", control_add_fault, ["POST"]),
    (f"{CONTROL_PREFIX}/faults", control_clear_faults, ["DELETE"]),
    (f"{CONTROL_PREFIX}/owners", control_add_owner, ["POST"]),
    (f"{CONTROL_PREFIX}/slack_users", control_add_slack_user, ["POST"]),
    (f"{CONTROL_PREFIX}/channels", control_add_channel, ["POST"]),
    (f"{CONTROL_PREFIX}/search_lag", control_search_lag, ["POST"]),
    (f"{CONTROL_PREFIX}/engagements", control_log_engagement, ["POST"]),
    (f"{CONTROL_PREFIX}/drop_answers", control_add_answer_drop, ["POST"]),
    (f"{CONTROL_PREFIX}/drop_answers", control_clear_answer_drops, ["DELETE"]),
]


def create_sandbox_app(
    search_lag: float = 3.0, state_file: str | os.PathLike[str] | None = None, limits: LimitSettings | None = None
) -> Flask:
    """A sandbox whose search sees writes ``search_lag`` seconds late; empty, or restored from
    and saved to ``state_file``; as slow and as strict as ``limits`` says (default: neither)."""
    # Named after the package, as before it was split into modules: the name is the app's and its logger's.
    app = Flask("connectors.sandbox")
    provider = DefaultJSONProvider(app)
    # Keep HubSpot's key order in bodies rather than Flask's alphabetical default.
    provider.sort_keys = False
    app.json = provider
    app.extensions[EXTENSION_KEY] = SandboxState(search_lag, StateFile(state_file) if state_file else None)
    for rule, view, methods in ROUTES:
        app.add_url_rule(
            rule,
            endpoint=f"{view.__name__}",
            view_func=view,
            methods=methods,
            strict_slashes=False,
        )
    install_limits(app, limits)
    app.before_request(before_request)
    # Flask runs after-request hooks last-registered first: the answer is dropped after it is saved.
    app.after_request(drop_answer)
    app.after_request(after_request)
    app.register_error_handler(HubSpotError, lambda exc: exc.response())
    app.register_error_handler(HTTPException, http_error)
    return app


class SandboxServer:
    """The sandbox app served on a daemon thread; ``with SandboxServer() as server:`` in tests."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        search_lag: float = 3.0,
        state_file: str | os.PathLike[str] | None = None,
        limits: LimitSettings | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.app = create_sandbox_app(search_lag, state_file, limits)
        self.url = ""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._server = make_server(self.host, self.port, self.app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="leadbridge-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_forever(
    host: str, port: int, search_lag: float, state_file: str | os.PathLike[str] | None = None, limits: LimitSettings | None = None
) -> None:
    """Serve the sandbox until interrupted; what ``leadbridge sandbox`` runs."""
    server = make_server(host, port, create_sandbox_app(search_lag, state_file, limits), threaded=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
