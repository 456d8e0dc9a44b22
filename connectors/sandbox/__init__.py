"""Local stand-in for the parts of HubSpot's CRM v3 API and Slack's Web API that leadbridge calls.

``leadbridge sandbox`` serves it for ``make run``; tests start a :class:`SandboxServer` on a free
port and drive it over real HTTP with the official SDKs (``hubspot-api-client`` v12 and
``slack_sdk``). It copies the real services wherever a client could tell the difference: the exact
success statuses SDK v12 expects (it turns any other success status into ``None``), HubSpot's error
bodies, the 409 on a duplicate email, 207 partial batches keyed by ``objectWriteTraceId``, a search
index that lags writes by ``search_lag`` seconds, rate-limit headers, and Slack's ``ok``/``error``
envelope with 429 + ``Retry-After``.

State lives in memory, per app instance, behind one lock. A control API under ``/__sandbox/`` (no
auth) shows the state, seeds owners and Slack users, changes the search lag and injects faults
(status, body, headers, delay) so retries can be exercised without a network.

Modules, each depending only on those before it: ``errors`` (HubSpot's error bodies), ``records``
(records and their history), ``search`` (search rules), ``crm`` (the object store), ``state``
(everything an app remembers), ``hubspot`` and ``slack`` (the vendor routes), ``control`` (the
``/__sandbox/`` API and :func:`seed_owners`), ``server`` (the app, its hooks and servers).
"""

from connectors.sandbox.control import seed_owners
from connectors.sandbox.server import SandboxServer, create_sandbox_app, serve_forever

__all__ = ["SandboxServer", "create_sandbox_app", "seed_owners", "serve_forever"]
