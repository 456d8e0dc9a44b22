"""The sandbox driven over real HTTP by the official HubSpot and Slack SDKs, as the relay does."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hubspot import HubSpot
from hubspot.crm import contacts as hs_contacts
from hubspot.crm import deals as hs_deals
from hubspot.crm import objects as hs_objects
from hubspot.crm import properties as hs_properties
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from connectors.sandbox import SandboxServer

SEARCH_LAG = 0.3
AUTH = {"Authorization": "Bearer test"}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(port=0, search_lag=SEARCH_LAG) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_state(server: SandboxServer) -> None:
    requests.post(f"{server.url}/__sandbox/reset", timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def hubspot(server: SandboxServer) -> HubSpot:
    # SDK v12 joins host and path by plain concatenation, so no trailing slash.
    return HubSpot(access_token="test", host=server.url)


@pytest.fixture(scope="module")
def contacts_batch(hubspot: HubSpot) -> Any:
    return hubspot.crm.contacts.batch_api


@pytest.fixture(scope="module")
def contacts_basic(hubspot: HubSpot) -> Any:
    return hubspot.crm.contacts.basic_api


@pytest.fixture(scope="module")
def contacts_search(hubspot: HubSpot) -> Any:
    return hubspot.crm.contacts.search_api


@pytest.fixture(scope="module")
def slack(server: SandboxServer) -> WebClient:
    return WebClient(token="xoxb-test", base_url=f"{server.url}/api/")


def control(server: SandboxServer, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST to the control API (or GET when there is no body) and return the JSON answer."""
    url = f"{server.url}/__sandbox/{path}"
    answer = requests.post(url, json=body, timeout=5) if body is not None else requests.get(url, timeout=5)
    answer.raise_for_status()
    return answer.json()


def upsert_input(email: str, trace_id: str | None = None, **properties: str) -> Any:
    return hs_contacts.SimplePublicObjectBatchInputUpsert(
        id=email, id_property="email", properties=properties, object_write_trace_id=trace_id
    )


def upsert(batch_api: Any, *inputs: Any) -> Any:
    return batch_api.upsert(
        batch_input_simple_public_object_batch_input_upsert=(
            hs_contacts.BatchInputSimplePublicObjectBatchInputUpsert(inputs=list(inputs))
        )
    )


def create_contact(basic_api: Any, **properties: str) -> Any:
    return basic_api.create(
        simple_public_object_input_for_create=hs_contacts.SimplePublicObjectInputForCreate(properties=properties)
    )


def search(search_api: Any, *filters: dict[str, Any], **request: Any) -> Any:
    return search_api.do_search(
        public_object_search_request=hs_contacts.PublicObjectSearchRequest(
            filter_groups=[hs_contacts.FilterGroup(filters=[hs_contacts.Filter(**f) for f in filters])],
            **request,
        )
    )


def error_body(exc: Any) -> dict[str, Any]:
    """The JSON body of an SDK ``ApiException`` (each SDK module has its own class)."""
    body: dict[str, Any] = json.loads(exc.body)
    return body


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def stamped(props: dict[str, str | None], object_id: str, **expected: str) -> dict[str, Any]:
    """Expected contact properties; the timestamps are whatever the sandbox stamped."""
    return {
        **expected,
        "createdate": props["createdate"],
        "lastmodifieddate": props["lastmodifieddate"],
        "hs_object_id": object_id,
    }


def test_batch_upsert_creates_then_updates_only_sent_properties(contacts_batch: Any) -> None:
    first = upsert(contacts_batch, upsert_input("Jane@Example.com", firstname="Jane", gclid="g1"))
    [created] = first.results
    assert (type(first).__name__, first.status, created.id, created.new) == (
        "BatchResponseSimplePublicUpsertObject",
        "COMPLETE",
        "1001",
        True,
    )
    assert created.properties == stamped(created.properties, "1001", email="jane@example.com", firstname="Jane", gclid="g1")

    [updated] = upsert(contacts_batch, upsert_input("jane@example.com", lastname="Doe")).results
    assert (updated.id, updated.new) == ("1001", False)
    assert updated.properties == stamped(
        updated.properties,
        "1001",
        email="jane@example.com",
        firstname="Jane",
        gclid="g1",
        lastname="Doe",
    )


def test_create_answers_201_and_a_duplicate_email_409(contacts_basic: Any) -> None:
    created = create_contact(contacts_basic, email="sam@example.com", firstname="Sam")
    assert (created.id, created.archived) == ("1001", False)

    with pytest.raises(hs_contacts.ApiException) as caught:
        create_contact(contacts_basic, email="SAM@example.com")
    body = error_body(caught.value)
    assert caught.value.status == 409
    assert body == {
        "status": "error",
        "message": "Contact already exists. Existing ID: 1001",
        "correlationId": body["correlationId"],
        "category": "CONFLICT",
    }
    assert list(body) == ["status", "message", "correlationId", "category"]


def test_update_and_get_by_email(contacts_basic: Any) -> None:
    create_contact(contacts_basic, email="ana@example.com", firstname="Ana")

    updated = contacts_basic.update(
        "ana@example.com",
        hs_contacts.SimplePublicObjectInput(properties={"phone": "555"}),
        id_property="email",
    )
    fetched = contacts_basic.get_by_id("ANA@example.com", id_property="email", properties=["firstname", "phone", "company"])
    assert updated.properties["phone"] == "555"
    assert (fetched.id, fetched.properties) == (
        "1001",
        {
            "firstname": "Ana",
            "phone": "555",
            "company": None,
            "createdate": fetched.properties["createdate"],
            "lastmodifieddate": fetched.properties["lastmodifieddate"],
            "hs_object_id": "1001",
        },
    )


def test_missing_contact_is_404(contacts_basic: Any) -> None:
    with pytest.raises(hs_contacts.ApiException) as caught:
        contacts_basic.get_by_id("nobody@example.com", id_property="email")
    assert (caught.value.status, error_body(caught.value)["category"]) == (404, "OBJECT_NOT_FOUND")


def test_changing_email_to_a_taken_one_is_409(contacts_basic: Any) -> None:
    create_contact(contacts_basic, email="one@example.com")
    create_contact(contacts_basic, email="two@example.com")
    with pytest.raises(hs_contacts.ApiException) as caught:
        contacts_basic.update("1002", hs_contacts.SimplePublicObjectInput(properties={"email": "one@example.com"}))
    assert (caught.value.status, error_body(caught.value)["message"]) == (
        409,
        "Contact already exists. Existing ID: 1001",
    )


def test_search_lags_writes(contacts_basic: Any, contacts_search: Any) -> None:
    by_email = {"property_name": "email", "operator": "EQ", "value": "Lag@Example.com"}
    create_contact(contacts_basic, email="lag@example.com", firstname="Old")
    assert search(contacts_search, by_email).total == 0

    time.sleep(SEARCH_LAG + 0.1)
    renamed = hs_contacts.SimplePublicObjectInput(properties={"firstname": "New"})
    contacts_basic.update("1001", renamed)
    [before] = search(contacts_search, by_email).results
    time.sleep(SEARCH_LAG + 0.1)
    [after] = search(contacts_search, by_email).results
    assert (before.properties["firstname"], after.properties["firstname"]) == ("Old", "New")


@pytest.mark.parametrize(
    ("flt", "expected_ids"),
    [
        ({"property_name": "hs_searchable_calculated_phone", "operator": "EQ", "value": "4155550132"}, ["1001"]),
        ({"property_name": "hs_searchable_calculated_phone", "operator": "EQ", "value": "6502530000"}, ["1002"]),
        ({"property_name": "hs_searchable_calculated_mobile_number", "operator": "EQ", "value": "(650) 253-0000"}, ["1001"]),
        ({"property_name": "email", "operator": "IN", "values": ["a@example.com", "b@example.com"]}, ["1001", "1002"]),
        ({"property_name": "email", "operator": "NEQ", "value": "A@EXAMPLE.COM"}, ["1002"]),
        ({"property_name": "company", "operator": "HAS_PROPERTY"}, ["1002"]),
        ({"property_name": "company", "operator": "NOT_HAS_PROPERTY"}, ["1001"]),
        ({"property_name": "company", "operator": "CONTAINS_TOKEN", "value": "plumbing"}, ["1002"]),
        ({"property_name": "email", "operator": "CONTAINS_TOKEN", "value": "*@example.com"}, ["1001", "1002"]),
    ],
)
def test_search_filters(
    server: SandboxServer,
    contacts_basic: Any,
    contacts_search: Any,
    flt: dict[str, Any],
    expected_ids: list[str],
) -> None:
    control(server, "search_lag", {"seconds": 0})
    create_contact(contacts_basic, email="a@example.com", phone="+1 415-555-0132", mobilephone="+1 650 253 0000")
    create_contact(contacts_basic, email="b@example.com", phone="(650) 253-0000", company="Acme Plumbing LLC")
    assert [r.id for r in search(contacts_search, flt).results] == expected_ids


def test_search_pages_and_returns_default_properties(server: SandboxServer, contacts_basic: Any, contacts_search: Any) -> None:
    control(server, "search_lag", {"seconds": 0})
    for name in ("a", "b", "c"):
        create_contact(contacts_basic, email=f"{name}@example.com", city="Oslo")
    in_oslo = {"property_name": "city", "operator": "EQ", "value": "oslo"}

    first = search(contacts_search, in_oslo, limit=2)
    second = search(contacts_search, in_oslo, limit=2, after=first.paging.next.after)
    assert (first.total, [r.id for r in first.results], first.paging.next.after) == (
        3,
        ["1001", "1002"],
        "2",
    )
    assert (second.total, [r.id for r in second.results], second.paging) == (3, ["1003"], None)
    assert sorted(first.results[0].properties) == [
        "createdate",
        "email",
        "firstname",
        "hs_object_id",
        "lastmodifieddate",
        "lastname",
    ]


def test_batch_upsert_with_trace_ids_answers_207_for_the_invalid_row(server: SandboxServer, contacts_batch: Any) -> None:
    answer = upsert(
        contacts_batch,
        upsert_input("ok@example.com", "trace-ok", firstname="Ok"),
        upsert_input("bad@example.com", "trace-bad", favourite_colour="blue"),
    )
    [error] = answer.errors
    written = [r.object_write_trace_id for r in answer.results]
    assert (type(answer).__name__, answer.num_errors, written) == (
        "BatchResponseSimplePublicUpsertObjectWithErrors",
        1,
        ["trace-ok"],
    )
    assert (error.status, error.category, error.context) == (
        "error",
        "VALIDATION_ERROR",
        {"objectWriteTraceId": ["trace-bad"]},
    )
    assert [c["properties"]["email"] for c in control(server, "state")["contacts"]] == ["ok@example.com"]


def test_unknown_property_fails_whole_batch_until_the_property_exists(
    server: SandboxServer, hubspot: HubSpot, contacts_batch: Any
) -> None:
    inputs = (upsert_input("x@example.com", firstname="X"), upsert_input("y@example.com", favourite_colour="blue"))
    with pytest.raises(hs_contacts.ApiException) as caught:
        upsert(contacts_batch, *inputs)
    body = error_body(caught.value)
    problem = {
        "isValid": False,
        "message": 'Property "favourite_colour" does not exist',
        "error": "PROPERTY_DOESNT_EXIST",
        "name": "favourite_colour",
        "localizedErrorMessage": 'Property "favourite_colour" does not exist',
    }
    assert (caught.value.status, body) == (
        400,
        {
            "status": "error",
            "message": "Property values were not valid: " + compact_json([problem]),
            "correlationId": body["correlationId"],
            "category": "VALIDATION_ERROR",
        },
    )
    assert control(server, "state")["contacts"] == []

    created = hubspot.crm.properties.core_api.create(
        "contacts",
        hs_properties.PropertyCreate(
            name="favourite_colour",
            label="Favourite colour",
            type="string",
            field_type="text",
            group_name="contactinformation",
        ),
    )
    answer = upsert(contacts_batch, *inputs)
    assert (created.name, [r.new for r in answer.results]) == ("favourite_colour", [True, True])
    assert "favourite_colour" in control(server, "state")["properties"]


@pytest.mark.parametrize(
    ("emails", "message"),
    [
        (["dup@example.com", "DUP@example.com"], "Duplicate IDs found in batch input: [dup@example.com]. IDs must be unique"),
        ([f"n{i}@example.com" for i in range(101)], "Batch input of 101 exceeds the limit of 100"),
    ],
)
def test_batch_upsert_rejects_duplicates_and_oversize(contacts_batch: Any, emails: list[str], message: str) -> None:
    with pytest.raises(hs_contacts.ApiException) as caught:
        upsert(contacts_batch, *(upsert_input(email) for email in emails))
    assert (caught.value.status, error_body(caught.value)["message"]) == (400, message)


def test_faults_fail_n_times_then_serve(server: SandboxServer, contacts_batch: Any) -> None:
    path = "/crm/v3/objects/contacts/batch/upsert"
    control(server, "faults", {"method": "POST", "path": path, "status": 503, "times": 2})
    statuses = []
    for _ in range(3):
        try:
            upsert(contacts_batch, upsert_input("f@example.com"))
            statuses.append(200)
        except hs_contacts.ApiException as exc:
            statuses.append(exc.status)
            assert error_body(exc)["category"] == "INTERNAL_ERROR"
    state = control(server, "state")
    assert statuses == [503, 503, 200]
    assert state["requests"] == [{"method": "POST", "path": path, "status": s} for s in statuses]
    assert len(state["contacts"]) == 1


@pytest.mark.parametrize(
    ("policy", "message", "policy_name"),
    [
        (None, "You have reached your ten_secondly_rolling limit.", "TEN_SECONDLY_ROLLING"),
        ("SECONDLY", "You have reached your secondly limit.", "SECONDLY"),
    ],
)
def test_hubspot_429_bodies(
    server: SandboxServer,
    contacts_search: Any,
    policy: str | None,
    message: str,
    policy_name: str,
) -> None:
    fault = {"path": "/crm/v3/objects/contacts/search", "status": 429, "times": 1}
    control(server, "faults", {**fault, "policy": policy} if policy else fault)
    by_email = {"property_name": "email", "operator": "EQ", "value": "x@example.com"}
    with pytest.raises(hs_contacts.ApiException) as caught:
        search(contacts_search, by_email)
    body = error_body(caught.value)
    assert (caught.value.status, body) == (
        429,
        {
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": body["correlationId"],
            "policyName": policy_name,
            "groupName": body["groupName"],
        },
    )
    assert search(contacts_search, by_email).total == 0


def test_delay_only_fault_serves_normally(server: SandboxServer, contacts_basic: Any) -> None:
    control(server, "faults", {"path": "/crm/v3/objects/contacts", "delay": 0.05, "times": 1})
    assert create_contact(contacts_basic, email="slow@example.com").id == "1001"


def test_missing_token_is_401_and_rate_limit_headers_skip_search(server: SandboxServer) -> None:
    url = f"{server.url}/crm/v3/objects/contacts"
    anonymous = requests.post(url, json={"properties": {"email": "a@example.com"}}, timeout=5)
    created = requests.post(url, json={"properties": {"email": "a@example.com"}}, headers=AUTH, timeout=5)
    searched = requests.post(f"{url}/search", json={}, headers=AUTH, timeout=5)
    assert (anonymous.status_code, anonymous.json()["category"]) == (401, "INVALID_AUTHENTICATION")
    assert {k: v for k, v in created.headers.items() if k.startswith("X-HubSpot")} == {
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        "X-HubSpot-RateLimit-Max": "190",
        "X-HubSpot-RateLimit-Remaining": "189",
    }
    assert [k for k in searched.headers if k.startswith("X-HubSpot")] == []


def test_deal_with_inline_association_to_a_contact(server: SandboxServer, hubspot: HubSpot, contacts_basic: Any) -> None:
    contact = create_contact(contacts_basic, email="buyer@example.com")
    deal = hubspot.crm.deals.basic_api.create(
        hs_deals.SimplePublicObjectInputForCreate(
            properties={"dealname": "Bathrooms", "dealstage": "appointmentscheduled", "amount": 5000},
            associations=[
                hs_deals.PublicAssociationsForObject(
                    to=hs_deals.PublicObjectId(id=contact.id),
                    types=[hs_deals.AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=3)],
                )
            ],
        )
    )
    [stored] = control(server, "state")["objects"]["deals"]
    assert (deal.id, deal.properties["pipeline"], deal.properties["amount"]) == (
        "1002",
        "default",
        "5000",
    )
    assert stored["associations"] == [
        {
            "toObjectId": "1001",
            "toObjectType": "contacts",
            "associationCategory": "HUBSPOT_DEFINED",
            "associationTypeId": 3,
        }
    ]


@pytest.mark.parametrize(
    ("object_type", "properties", "missing"),
    [
        ("deals", {"dealname": "No stage"}, "dealstage"),
        ("notes", {"hs_note_body": "hi"}, "hs_timestamp"),
        ("tasks", {"hs_task_subject": "Call"}, "hs_timestamp"),
        ("leads", {}, "hs_lead_name"),
    ],
)
def test_required_properties(hubspot: HubSpot, object_type: str, properties: dict[str, str], missing: str) -> None:
    with pytest.raises(hs_objects.ApiException) as caught:
        hubspot.crm.objects.basic_api.create(object_type, hs_objects.SimplePublicObjectInputForCreate(properties=properties))
    [problem] = json.loads(error_body(caught.value)["message"].split(": ", 1)[1])
    assert (caught.value.status, problem["name"], problem["error"]) == (
        400,
        missing,
        "REQUIRED_PROPERTY",
    )


def test_lead_needs_its_primary_contact_association(hubspot: HubSpot, contacts_basic: Any) -> None:
    create_contact(contacts_basic, email="lead@example.com")
    spec = hs_objects.AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=578)

    def create_lead(contact_id: str) -> Any:
        lead = hs_objects.SimplePublicObjectBatchInputForCreate(
            properties={"hs_lead_name": "Lead"},
            associations=[hs_objects.PublicAssociationsForObject(to=hs_objects.PublicObjectId(id=contact_id), types=[spec])],
        )
        return hubspot.crm.objects.batch_api.create(
            "leads", hs_objects.BatchInputSimplePublicObjectBatchInputForCreate(inputs=[lead])
        )

    with pytest.raises(hs_objects.ApiException) as caught:
        create_lead("999")
    created = create_lead("1001")
    assert (caught.value.status, created.status, [r.id for r in created.results]) == (
        400,
        "COMPLETE",
        ["1002"],
    )


def test_owners_listing_and_lookup(server: SandboxServer, hubspot: HubSpot) -> None:
    control(server, "owners", {"id": "77", "email": "Sam@Example.com", "firstName": "Sam", "lastName": "Lee"})
    control(server, "owners", {"email": "kim@example.com", "firstName": "Kim", "lastName": "Ng"})
    control(server, "owners", {"email": "old@example.com", "firstName": "Old", "lastName": "Timer", "archived": True})
    owners = hubspot.crm.owners.owners_api

    def summary(page: Any) -> list[tuple[Any, ...]]:
        return [(o.id, o.email, o.first_name, o.last_name, o.archived, o.type, o.user_id is None) for o in page.results]

    assert summary(owners.get_page()) == [
        ("77", "Sam@Example.com", "Sam", "Lee", False, "PERSON", False),
        ("501", "kim@example.com", "Kim", "Ng", False, "PERSON", False),
    ]
    assert summary(owners.get_page(email="sam@example.com")) == [
        ("77", "Sam@Example.com", "Sam", "Lee", False, "PERSON", False),
    ]
    assert summary(owners.get_page(archived=True)) == [
        ("502", "old@example.com", "Old", "Timer", True, "PERSON", True),
    ]
    assert owners.get_by_id("501").email == "kim@example.com"


def test_slack_auth_test(slack: WebClient) -> None:
    assert slack.auth_test().data == {
        "ok": True,
        "url": "https://sandbox.slack.com/",
        "team": "Sandbox",
        "user": "leadbridge",
        "team_id": "T0SANDBOX",
        "user_id": "U0BOT",
        "bot_id": "B0BOT",
    }


def test_slack_post_message_is_stored(server: SandboxServer, slack: WebClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Jane Doe*"}}]
    first = slack.chat_postMessage(channel="#leads", text="New lead: Jane Doe", blocks=blocks)
    second = slack.chat_postMessage(channel="C0LEADS", text="reply", thread_ts=first["ts"])
    [stored, reply] = control(server, "state")["messages"]
    assert (first["ok"], first["channel"], float(second["ts"]) > float(first["ts"])) == (
        True,
        "#leads",
        True,
    )
    assert stored == {
        "channel": "#leads",
        "ts": first["ts"],
        "text": "New lead: Jane Doe",
        "blocks": blocks,
        "thread_ts": None,
        "args": {"channel": "#leads", "text": "New lead: Jane Doe", "blocks": blocks},
    }
    assert (reply["channel"], reply["thread_ts"]) == ("C0LEADS", first["ts"])


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"channel": "#leads"}, "no_text"),
        ({"channel": "#leads", "text": "x", "blocks": [{"type": "divider"}] * 51}, "invalid_blocks"),
        ({"text": "x"}, "channel_not_found"),
    ],
)
def test_slack_post_message_errors(slack: WebClient, args: dict[str, Any], error: str) -> None:
    # api_call skips chat_postMessage's missing-text warning, which pytest turns into an error.
    with pytest.raises(SlackApiError) as caught:
        slack.api_call("chat.postMessage", json=args)
    assert (caught.value.response.status_code, caught.value.response["error"]) == (200, error)


@pytest.mark.parametrize(("headers", "retry_after"), [({"Retry-After": "7"}, "7"), (None, "1")])
def test_slack_429_fault(server: SandboxServer, slack: WebClient, headers: dict[str, str] | None, retry_after: str) -> None:
    fault = {"path": "/api/chat.postMessage", "status": 429, "times": 1}
    control(server, "faults", {**fault, "headers": headers} if headers else fault)
    with pytest.raises(SlackApiError) as caught:
        slack.chat_postMessage(channel="#leads", text="hello")
    response = caught.value.response
    assert (response.status_code, response.headers["Retry-After"], response["error"]) == (
        429,
        retry_after,
        "ratelimited",
    )
    assert control(server, "state")["messages"] == []
    assert slack.chat_postMessage(channel="#leads", text="hello")["ok"] is True


def test_slack_users_lookup_by_email(server: SandboxServer, slack: WebClient) -> None:
    control(server, "slack_users", {"id": "U0456", "email": "owner@example.com", "name": "owner"})
    found = slack.users_lookupByEmail(email="OWNER@example.com")
    with pytest.raises(SlackApiError) as caught:
        slack.users_lookupByEmail(email="nobody@example.com")
    assert found["user"] == {
        "id": "U0456",
        "name": "owner",
        "deleted": False,
        "profile": {"email": "owner@example.com"},
    }
    assert caught.value.response["error"] == "users_not_found"


def test_slack_without_token_is_not_authed(server: SandboxServer) -> None:
    with pytest.raises(SlackApiError) as caught:
        WebClient(base_url=f"{server.url}/api/").auth_test()
    assert caught.value.response.data == {"ok": False, "error": "not_authed"}


def test_summary_page_lists_latest_contacts_and_messages(server: SandboxServer, contacts_basic: Any, slack: WebClient) -> None:
    create_contact(contacts_basic, email="page@example.com", firstname="Page")
    slack.chat_postMessage(channel="#leads", text="<b>hi</b>")
    page = requests.get(f"{server.url}/__sandbox/", timeout=5)
    linked = requests.get(f"{server.url}/__sandbox/contacts/1001", timeout=5).json()
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<a href='contacts/1001'>1001</a>: page@example.com Page" in page.text
    assert "#leads: &lt;b&gt;hi&lt;/b&gt;" in page.text
    assert (linked["id"], linked["properties"]["firstname"], linked["associations"]) == (
        "1001",
        "Page",
        [],
    )
