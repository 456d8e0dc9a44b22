"""Staging: a form per configured source, to try the whole path before going live.

With ``server.staging: true`` the relay serves ``/staging/<source>``: an HTML form with
one input per key the source's mapping reads. Posting it builds the request exactly as
the vendor would send it (the connector's ``wire_request``, signed with the source's
first active secret) and hands it to the same ``Intake.accept`` a real webhook goes
through, so the signature check, parsing, idempotency key and ledger write all run.
The worker then takes it like any other delivery. Off in production: anyone who can
reach the page can create leads.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jinja2
from flask import Blueprint, Flask, request, url_for
from itsdangerous import BadData, URLSafeTimedSerializer

from .errors import IntakeError
from .lead import looks_like_test
from .mapping import Mapping
from .ports import Request
from .sources import SourceKit, interpret_body

if TYPE_CHECKING:
    from .app import Intake

log = logging.getLogger(__name__)

# The flat key most connectors carry their form key in (Typeform, Google, Gravity, Elementor),
# so a submission for ``?form=<key>`` is mapped by that form's mapping, not the default one.
FORM_KEY_FIELD = "form_id"
# Fields whose inputs get a keyboard hint; never a browser-validated type, so a marketer
# can also try what an invalid email or phone does.
INPUT_MODES = {"email": "email", "phone": "tel"}

Page = tuple[str, int]

# How long a rendered form can still be sent: long enough to fill it in, short enough to expire.
CSRF_MAX_AGE_SECONDS = 3600
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class FormInput:
    """One input of a staging form: the flat key it posts, and what reads that key."""

    key: str
    # Canonical fields, "<property> (custom property)" and "<name> (consent)" reading the key.
    readers: tuple[str, ...]
    multiline: bool = False
    inputmode: str | None = None

    @property
    def label(self) -> str:
        return ", ".join(self.readers)


def form_inputs(mapping: Mapping) -> list[FormInput]:
    """One input per rule's first ``from`` key, in mapping order. A key read by several
    rules (a full name split into first and last) is one input labelled with all of them;
    a rule with only a default has nothing to type."""
    sections = {"{}": mapping.fields, "{} (custom property)": mapping.custom, "{} (consent)": mapping.consent}
    readers: dict[str, list[str]] = {}
    for label, rules in sections.items():
        for name, rule in rules.items():
            if rule.from_:
                # "FULL_NAME|first_name" reads the flat key FULL_NAME.
                readers.setdefault(rule.from_[0].split("|")[0], []).append(label.format(name))
    return [
        FormInput(
            key=key,
            readers=tuple(names),
            multiline="message" in names,
            inputmode=next((INPUT_MODES[n] for n in names if n in INPUT_MODES), None),
        )
        for key, names in readers.items()
    ]


class StagingError(IntakeError):
    """Nothing to try at this address (unknown source or form) or no way to sign it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def register_staging(app: Flask, intake: Intake) -> None:
    """Serve the staging pages on ``app``; only called when ``server.staging`` is on."""
    staging = Blueprint("staging", __name__, url_prefix="/staging")
    # The key is kept in the shared limits file, so a form rendered by one worker posts to any.
    csrf = URLSafeTimedSerializer(app.extensions["leadbridge.limits"].secret("staging-csrf"), salt="staging-form")
    over_limit = app.extensions["leadbridge.over_limit"]

    @staging.get("/")
    def index() -> Page:
        return _render("index.html", intake, title="Sources", sources=[_listing(kit) for kit in intake.kits.values()]), 200

    @staging.get("/<source>")
    def form(source: str) -> Page:
        kit, mapping = _find(intake, source)
        return _render(
            "form.html",
            intake,
            title=f"Try {source}",
            kit=kit,
            mapping=mapping,
            form_key=request.args.get("form"),
            inputs=form_inputs(mapping),
            action=url_for("staging.submit", source=source, form=request.args.get("form") or None),
            secret_set=bool(kit.spec.secrets()),
            csrf_token=csrf.dumps(source),
        ), 200

    @staging.post("/<source>")
    def submit(source: str) -> Page:
        kit, mapping = _find(intake, source)
        limited = over_limit(source)
        if limited:
            raise StagingError(429, "rate_limited", "Too many requests; wait a minute and send again.")
        _check_same_site(csrf, source)
        posted = request.form.to_dict()
        posted.pop(CSRF_FIELD, None)
        return _submit(intake, kit, mapping, request.args.get("form"), posted)

    # Ahead of the app's JSON handler for these routes: a person reads this, not a sender.
    @staging.errorhandler(IntakeError)
    def refused(exc: IntakeError) -> Page:
        return _render(
            "error.html", intake, title=f"Error {exc.status}", status=exc.status, code=exc.code, message=str(exc)
        ), exc.status

    app.register_blueprint(staging)


def _check_same_site(csrf: URLSafeTimedSerializer, source: str) -> None:
    """Refuse a post another site made a browser send: foreign Origin/Referer, or no valid form token."""
    own = request.host_url.rstrip("/")
    origin = request.headers.get("Origin") or _origin_of(request.headers.get("Referer", ""))
    if origin and origin != own:
        raise StagingError(403, "cross_site", "This form can only be sent from its own staging page.")
    try:
        signed_for = csrf.loads(request.form.get(CSRF_FIELD, ""), max_age=CSRF_MAX_AGE_SECONDS)
    except BadData:
        signed_for = None
    if signed_for != source:
        raise StagingError(403, "bad_form_token", "The form has expired or was not rendered here; reload it.")


def _origin_of(referer: str) -> str:
    parts = referer.split("/", 3)
    return "/".join(parts[:3]) if len(parts) >= 3 and parts[0] in ("http:", "https:") else ""


def _listing(kit: SourceKit) -> dict[str, Any]:
    """One source on the index page: its default form's link (if it has a default mapping)
    and a link per configured form."""
    return {
        "name": kit.name,
        "type": kit.spec.type,
        "secret_set": bool(kit.spec.secrets()),
        "url": url_for("staging.form", source=kit.name) if None in kit.mappings else None,
        "forms": [(key, url_for("staging.form", source=kit.name, form=key)) for key in kit.mappings if key is not None],
    }


def _find(intake: Intake, source: str) -> tuple[SourceKit, Mapping]:
    """The kit and the mapping this request is about; StagingError (404) saying why not."""
    kit = intake.kits.get(source)
    if kit is None:
        known = ", ".join(sorted(intake.kits)) or "none"
        raise StagingError(404, "unknown_source", f"No source named {source!r} is configured (configured: {known}).")
    form_key = request.args.get("form") or None
    mapping = kit.mappings.get(form_key)
    if mapping is None:
        forms = ", ".join(sorted(k for k in kit.mappings if k is not None)) or "none"
        what = f"no form {form_key!r} (forms: {forms})" if form_key else "no default mapping; pick a form"
        raise StagingError(404, "unknown_form", f"Source {source!r} has {what}.")
    return kit, mapping


def _submit(intake: Intake, kit: SourceKit, mapping: Mapping, form_key: str | None, posted: dict[str, str]) -> Page:
    """Send the posted values as the vendor would, through the webhook's own intake path."""
    secrets = kit.spec.secrets()
    if not secrets:
        names = kit.spec.secret_refs()
        raise StagingError(503, "no_secret", f"Source {kit.name!r} has no secret: set {names} and restart the relay.")
    keys = {i.key for i in form_inputs(mapping)}
    # Empty inputs are left out, as a vendor leaves out unanswered questions.
    values = {key: value for key, value in posted.items() if key in keys and value.strip()}
    if form_key:
        values.setdefault(FORM_KEY_FIELD, form_key)
    wire = kit.source.wire_request(values, secrets[0])
    # Exactly what the webhook route builds from a real request.
    req = Request(wire.body, wire.content_type, {k.lower(): v for k, v in wire.headers.items()}, dict(wire.query))
    delivery_id, created = intake.accept(kit.name, req)
    log.info("staging delivery %s accepted from %s", delivery_id, kit.name)
    # The wire request itself is not shown: some vendors carry the secret in the body or URL.
    return _render(
        "result.html",
        intake,
        title="Accepted",
        kit=kit,
        delivery_id=delivery_id,
        duplicate=not created,
        again=url_for("staging.form", source=kit.name, form=form_key or None),
        preview=_preview(intake, kit, req),
    ), 200


def _preview(intake: Intake, kit: SourceKit, req: Request) -> dict[str, Any] | None:
    """What the worker will make of the delivery (the same pure step it runs first)."""
    try:
        seen = interpret_body(kit, req.body, req.content_type, intake.settings.lead.default_region)
    except Exception as exc:  # a mapping problem is the worker's to report; the delivery is stored
        # The type only: a message or traceback could carry what the person typed.
        log.warning("staging preview failed for source %s: %s", kit.name, type(exc).__name__)
        return None
    lead = seen.lead.model_dump(mode="json", exclude_defaults=True)
    extras = {f"{name} ({section})": value for section in ("custom", "consent") for name, value in lead.pop(section, {}).items()}
    return {
        "kind": seen.kind,
        "spam": seen.spam,
        "test": looks_like_test(seen.lead),
        "problems": seen.result.problems,
        "lead": {name: value if isinstance(value, str) else json.dumps(value) for name, value in (lead | extras).items()},
    }


def _render(name: str, intake: Intake, **context: Any) -> str:
    settings = intake.settings
    # Where leads from this page end up: shown so nobody sends test leads to a live portal unknowingly.
    targets = {"hubspot": settings.hubspot.base_url, "slack": settings.slack.channel}
    return _templates().get_template(name).render(targets=targets, index=url_for("staging.index"), **context)


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.DictLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True
    )


TEMPLATES = {
    "base.html": """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · leadbridge staging</title>
<link rel="icon" href="data:,">
<style>
body { font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 0 auto; padding: 0 1rem 3rem; color: #1d1d1f; }
.banner { background: #fff3cd; border: 2px solid #b58100; padding: .75rem 1rem; margin: 1rem 0; }
.field { margin: .9rem 0; }
label { display: block; font-weight: 600; }
label code, dd code { font-weight: normal; background: #f1f1f1; padding: 0 .25rem; }
input, textarea { width: 100%; box-sizing: border-box; padding: .45rem; font: inherit; border: 1px solid #767676; }
input:focus, textarea:focus, button:focus { outline: 3px solid #1a5fb4; outline-offset: 1px; }
button { font: inherit; padding: .55rem 1.4rem; background: #1a5fb4; color: #fff; border: 0; cursor: pointer; }
.warning, [role=alert] { background: #fde2e1; border: 2px solid #b3261e; padding: .75rem 1rem; }
table { border-collapse: collapse; } th, td { text-align: left; padding: .2rem .8rem .2rem 0; vertical-align: top; }
pre { white-space: pre-wrap; word-break: break-all; background: #f6f6f6; padding: .75rem; }
</style>
</head>
<body>
<header class="banner" id="staging-banner">
<strong>STAGING.</strong> What you send here goes through the real intake and worker: contacts are
written to HubSpot at <code>{{ targets.hubspot }}</code> and messages posted to Slack
<code>{{ targets.slack }}</code>. Never turn staging on for a relay facing the internet.
</header>
<nav><a href="{{ index }}">All sources</a></nav>
<main>
{% block main %}{% endblock %}
</main>
</body>
</html>
""",
    "index.html": """{% extends "base.html" %}
{% block main %}
<h1>Try a form before going live</h1>
{% if sources %}
<ul>
{% for source in sources %}
<li>{{ '' }}
{%- if source.url %}<a href="{{ source.url }}">{{ source.name }}</a>{% else %}{{ source.name }}{% endif %}
 ({{ source.type }}{{ ", no secret set: sending will fail" if not source.secret_set }})
{%- if source.forms %}; forms: {% for key, url in source.forms -%}
<a href="{{ url }}">{{ key }}</a>{{ ", " if not loop.last }}
{%- endfor %}{% endif %}
</li>
{% endfor %}
</ul>
{% else %}
<p>No source is configured: add one under <code>sources:</code> in the config.</p>
{% endif %}
{% endblock %}
""",
    "form.html": """{% extends "base.html" %}
{% block main %}
<h1>Try the <code>{{ kit.name }}</code> form{% if form_key %} <code>{{ form_key }}</code>{% endif %}</h1>
<p>Sent as a {{ kit.spec.type }} webhook, authenticated with this source's secret, through the same intake path.
{% if mapping.description %}Mapping: {{ mapping.description }}. {% endif %}
Empty inputs are left out. An <code>example.com</code> address or a name like "Test User" is treated as
test data and never reaches HubSpot.</p>
{% if not secret_set %}
<p class="warning" role="alert">No secret is set for this source ({{ kit.spec.secret_refs() }}): sending will fail.</p>
{% endif %}
<form method="post" action="{{ action }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token }}">
{% for input in inputs %}
<div class="field">
<label for="field-{{ loop.index }}">{{ input.label }} <code>{{ input.key }}</code></label>
{% if input.multiline %}
<textarea id="field-{{ loop.index }}" name="{{ input.key }}" rows="3"></textarea>
{% else %}
<input id="field-{{ loop.index }}" name="{{ input.key }}" type="text" autocomplete="off"
{%- if input.inputmode %} inputmode="{{ input.inputmode }}"{% endif %}>
{% endif %}
</div>
{% endfor %}
<button type="submit" id="send">Send as {{ kit.spec.type }} would</button>
</form>
{% endblock %}
""",
    "result.html": """{% extends "base.html" %}
{% block main %}
<h1>Accepted</h1>
<dl>
<dt>Delivery id</dt><dd><code id="delivery-id">{{ delivery_id }}</code></dd>
<dt>Duplicate</dt>
<dd id="duplicate">
{%- if duplicate %}yes: this submission was already recorded, so nothing new will happen{% else %}no{% endif -%}
</dd>
</dl>
<h2>Next steps</h2>
<ol>
<li>A running worker (<code>leadbridge run</code> or <code>leadbridge worker</code>) takes it within seconds;
without one, run <code>leadbridge worker --once</code>.</li>
<li>See its state, steps and events: <code>leadbridge show {{ delivery_id }}</code>
(add <code>--body</code> for the request as the vendor sends it).</li>
<li>Check the contact in HubSpot and the message in Slack <code>{{ targets.slack }}</code>.</li>
</ol>
{% if preview %}
<h2>What the worker will make of it</h2>
{% if preview.spam %}<p class="warning">Spam: {{ preview.spam }}. It will be kept but not forwarded.</p>{% endif %}
{% if preview.kind != "lead" %}<p class="warning">This is a {{ preview.kind }} delivery, not a lead.</p>{% endif %}
{% if preview.test %}<p class="warning">Test data ({{ preview.test }}): it will not reach HubSpot.</p>{% endif %}
{% for problem in preview.problems %}<p class="warning">{{ problem }}</p>{% endfor %}
<table id="lead">
{% for name, value in preview.lead.items() %}<tr><th scope="row">{{ name }}</th><td>{{ value }}</td></tr>
{% endfor %}
</table>
{% endif %}
<p><a href="{{ again }}">Send another</a></p>
{% endblock %}
""",
    "error.html": """{% extends "base.html" %}
{% block main %}
<h1>Not sent</h1>
<div id="error" role="alert"><strong>{{ status }} <code>{{ code }}</code></strong>: {{ message }}</div>
{% endblock %}
""",
}
