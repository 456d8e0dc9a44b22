"""HubSpot CRM through the official SDK (``hubspot-api-client`` v12).

Create-or-update without duplicates:
- a person the ledger already knows: PATCH that contact by id;
- a person with an email: ``batch/upsert`` by email (one call, no search, so no search lag);
- a person with only a phone: search by phone, then PATCH or create.
Reads of contacts by id or email go through ``batch/read`` (up to 100 per call).
A ``409 Contact already exists. Existing ID: N`` always ends as an update of N.
A create is never repeated by a lost answer (bridge/norepeat.py): deals and phone-only contacts
carry the unique ``leadbridge_delivery_id``, so a create sent again meets a 409 naming the first
record, which is reused; notes and tasks are found through the contact's associations.
Only non-empty values are sent, so a field the form left empty never blanks HubSpot.
Every SDK or transport error is translated here into RetriableError or PermanentError.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import phonenumbers
import urllib3
from hubspot import HubSpot
from hubspot.crm import objects, owners
from hubspot.crm import pipelines as pipelines_api
from hubspot.crm import properties as properties_api
from hubspot.crm.associations import v4 as associations_v4
from hubspot.crm.contacts import (
    ApiException,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchReadInputSimplePublicObjectId,
    Filter,
    FilterGroup,
    PublicGdprDeleteInput,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from bridge.config import HubSpotSettings
from bridge.errors import (
    UNKNOWN_OUTCOME_STATUSES,
    DeliveryError,
    PermanentError,
    RetriableError,
    ThrottledError,
    UnansweredError,
)
from bridge.logs import redact
from bridge.merge import FIRST_TOUCH_PREFIX, LAST_TOUCH, OVERWRITE, SET_IF_EMPTY, last_touch_clears, merged
from bridge.norepeat import DELIVERY_ID_PROPERTY
from bridge.ports import ContactResult, ContactWrite, Found, FoundPage, Link, NewRecord, Snapshot
from bridge.ratelimit import CallPacer
from bridge.text import clean_text
from bridge.workermetrics import record_first_touch_kept, record_hubspot_request, record_rate_limited

log = logging.getLogger(__name__)
BATCH_LIMIT = 100
EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")
# 429 policies (hubspot.md §4): the ten-second burst window vs the search API's per-second limit.
RATE_LIMIT_WAIT = {"TEN_SECONDLY_ROLLING": 10.0, "SECONDLY": 1.0}
RETRIABLE_STATUSES = {423, 429, 477, 500, 502, 503, 504, 521, 523, 524}
T = TypeVar("T")
M = TypeVar("M")
# Each SDK module has its own exception class with no shared base (hubspot.md §12).
API_ERRORS = (
    ApiException,
    objects.ApiException,
    owners.ApiException,
    pipelines_api.ApiException,
    properties_api.ApiException,
    associations_v4.ApiException,
)
# A property value holds at most 65,536 characters (hubspot.md, notes): longer ones are refused.
PROPERTY_LIMIT = 65_536
TRUNCATED = "… [truncated]"
POOL_SIZE = 100
OBJECT_TYPE_IDS = {"contacts": "0-1", "deals": "0-3", "notes": "0-46", "tasks": "0-27", "leads": "0-136"}
# Where a note's or task's delivery marker is written (bridge/norepeat.py).
MARKED_BODY = {"notes": "hs_note_body", "tasks": "hs_task_body"}
PROPERTY_GROUPS = {"contacts": "contactinformation", "deals": "dealinformation"}


class HubSpotCRM:
    def __init__(self, settings: HubSpotSettings, pacer: CallPacer | None = None) -> None:
        self.settings = settings
        self.pacer = pacer
        # The SDK logs response bodies (lead data) at DEBUG; keep it to warnings whatever the root level.
        logging.getLogger("hubspot").setLevel(logging.WARNING)
        # Pooled connections for as many calls at once as a busy worker makes (the SDK keeps 10).
        client = HubSpot(access_token=settings.token() or "", host=settings.base_url, connection_pool_maxsize=POOL_SIZE)
        # Each attribute access builds a new ApiClient and pool (hubspot.md §12): keep them.
        contacts = client.crm.contacts
        self._basic = contacts.basic_api
        self._batch = contacts.batch_api
        self._search = contacts.search_api
        self._objects = client.crm.objects.basic_api
        self._batch_objects = client.crm.objects.batch_api
        self._search_objects = client.crm.objects.search_api
        self._owners = client.crm.owners.owners_api
        self._pipelines = client.crm.pipelines.pipelines_api
        self._properties = client.crm.properties.core_api
        self._associations = client.crm.associations.v4.basic_api
        # An SDK model made without a configuration builds one of its own, and each one resets the
        # SDK's loggers (logging then scans every logger in the process, under its lock): a dozen
        # models a lead cost more CPU than the rest of the HubSpot calls. Ours share the client's.
        self._configs = {
            "hubspot.crm.contacts": self._basic.api_client.configuration,
            "hubspot.crm.objects": self._objects.api_client.configuration,
            "hubspot.crm.properties": self._properties.api_client.configuration,
        }
        self._owner_ids: dict[str, str | None] = {}
        self._owner_active: dict[str, tuple[bool, float]] = {}
        self._lookups: dict[str, threading.Lock] = {}
        self._lookups_guard = threading.Lock()

    # -- the CRM interface --------------------------------------------------------

    def upsert_contacts(self, writes: Sequence[ContactWrite]) -> dict[str, ContactResult | DeliveryError]:
        results: dict[str, ContactResult | DeliveryError] = {}
        plans: dict[str, Plan] = {}
        for write in writes:
            try:
                plans[write.trace_id] = self._plan(write)
            except DeliveryError as exc:
                results[write.trace_id] = exc
        by_email = [w for w in writes if w.trace_id in plans and w.lead.email and not w.known_contact_id]
        for chunk in _chunks(by_email):
            results.update(self._upsert_by_email(chunk, plans))
        for write in writes:
            if write.trace_id not in plans or write in by_email:
                continue
            try:
                results[write.trace_id] = self._write_one(write, plans[write.trace_id])
            except DeliveryError as exc:
                results[write.trace_id] = exc
        return results

    def lookup_contact(self, write: ContactWrite, properties: Sequence[str]) -> Snapshot:
        outcome = self.lookup_contacts([write], properties)[write.trace_id]
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    def lookup_contacts(self, writes: Sequence[ContactWrite], properties: Sequence[str]) -> dict[str, Snapshot | DeliveryError]:
        """Snapshots by trace_id: known ids in one batch read, emails in another, phones by search."""
        names = sorted(set(properties))
        by_id = {w.trace_id: w.known_contact_id for w in writes if w.known_contact_id}
        by_email = {w.trace_id: str(w.lead.email).lower() for w in writes if not w.known_contact_id and w.lead.email}
        results: dict[str, Snapshot | DeliveryError] = {}
        for trace, found in self._read_many(by_id, names, by_email=False).items():
            # A known id HubSpot no longer has keeps its id: the write's 404 falls back to the email.
            results[trace] = found if isinstance(found, DeliveryError) or found.contact_id else Snapshot(by_id[trace])
        results.update(self._read_many(by_email, names, by_email=True))
        for write in writes:
            if write.trace_id in results:
                continue
            try:
                results[write.trace_id] = Snapshot(*self._find_by_phone(write.lead.phone, names))
            except DeliveryError as exc:
                results[write.trace_id] = exc
        return results

    def create_record(self, object_type: str, properties: Mapping[str, str], links: Sequence[Link]) -> str:
        body = self._new(objects.SimplePublicObjectInputForCreate, **self._record_input(properties, links))
        try:
            created = self._answer(self._objects.create, object_type, body)
        except objects.ApiException as exc:
            if exc.status == 409 and properties.get(DELIVERY_ID_PROPERTY):
                return self._created_before(object_type, str(_body(exc).get("message", "")), properties[DELIVERY_ID_PROPERTY])
            raise self._translate(exc) from exc
        return str(created["id"])

    def _created_before(self, object_type: str, message: str, delivery_id: str) -> str:
        """The record an earlier create of this delivery made: named by the 409, else read by its key."""
        match = EXISTING_ID.search(message)
        if match:
            return match.group(1)
        try:
            found = self._call(self._objects.get_by_id, object_type, delivery_id, id_property=DELIVERY_ID_PROPERTY)
        except objects.ApiException as exc:
            raise self._translate(exc) from exc
        return str(found.id)

    def find_record(self, object_type: str, contact_id: str, marker: str) -> str | None:
        """Through the contact's associations (a read, not a search: no index lag), newest first,
        the note or task whose body carries ``marker``."""
        body = MARKED_BODY[object_type]
        linked: list[int] = []
        after = None
        while True:
            try:
                page = self._call(self._associations.get_page, "contacts", contact_id, object_type, after=after, limit=500)
            except associations_v4.ApiException as exc:
                raise self._translate(exc) from exc
            linked += [int(item.to_object_id) for item in page.results or []]
            after = page.paging.next.after if page.paging and page.paging.next else None
            if not after:
                break
        # HubSpot's ids grow: the record an attempt just made is among the newest.
        newest = sorted(set(linked), reverse=True)
        for start in range(0, len(newest), BATCH_LIMIT):
            request = self._new(
                objects.BatchReadInputSimplePublicObjectId,
                properties=[body],
                inputs=[self._new(objects.SimplePublicObjectId, id=str(i)) for i in newest[start : start + BATCH_LIMIT]],
                properties_with_history=[],
            )
            try:
                found = self._call(self._batch_objects.read, object_type, request, archived=False)
            except objects.ApiException as exc:
                raise self._translate(exc) from exc
            for hit in found.results or []:
                if marker in str((hit.properties or {}).get(body) or ""):
                    return str(hit.id)
        return None

    def create_records(self, object_type: str, records: Sequence[NewRecord]) -> list[str | DeliveryError]:
        """``batch/create`` (100 at most), each row with its own outcome: a 207 row error fails
        only its row. One record goes through the single create, as before."""
        if len(records) == 1:
            try:
                return [self.create_record(object_type, records[0].properties, records[0].links)]
            except DeliveryError as exc:
                return [exc]
        inputs = [
            self._new(
                objects.SimplePublicObjectBatchInputForCreate,
                **self._record_input(r.properties, r.links),
                object_write_trace_id=f"r{n}",
            )
            for n, r in enumerate(records)
        ]
        batch = self._new(objects.BatchInputSimplePublicObjectBatchInputForCreate, inputs=inputs)
        try:
            response = self._answer(self._batch_objects.create, object_type, batch)
        except objects.ApiException as exc:
            if exc.status in (400, 409):
                # Refused whole for one row (a conflict names only the first, hubspot.md §2):
                # each row alone, so a row an earlier attempt made is reused and the others made.
                return [self._create_one(object_type, record) for record in records]
            return [self._translate(exc)] * len(records)
        except DeliveryError as exc:
            return [exc] * len(records)
        # Results are not in input order (hubspot.md §1): matched by trace id, never by position.
        results = response.get("results") or []
        created = {str(r["objectWriteTraceId"]): str(r["id"]) for r in results if r.get("objectWriteTraceId")}
        failed = {
            trace: self._row_error(object_type, err, records[int(trace[1:])])
            for err in response.get("errors") or []
            for trace in ((err.get("context") or {}).get("objectWriteTraceId") or [])
            if re.fullmatch(r"r\d+", str(trace)) and int(trace[1:]) < len(records)
        }
        if results and not created:
            log.warning("HubSpot batch create answered without trace ids; %d %s will be retried", len(records), object_type)
        missing = RetriableError(f"HubSpot returned no result for this {object_type.rstrip('s')}")
        return [created.get(f"r{n}") or failed.get(f"r{n}") or missing for n in range(len(records))]

    def _create_one(self, object_type: str, record: NewRecord) -> str | DeliveryError:
        try:
            return self.create_record(object_type, record.properties, record.links)
        except DeliveryError as exc:
            return exc

    def _row_error(self, object_type: str, err: dict[str, Any], record: NewRecord) -> str | DeliveryError:
        """A 207 row error; a conflict on this row's own delivery id names the record to reuse."""
        delivery_id = record.properties.get(DELIVERY_ID_PROPERTY)
        if err.get("category") == "CONFLICT" and delivery_id:
            try:
                return self._created_before(object_type, str(err.get("message") or ""), delivery_id)
            except DeliveryError as exc:
                return exc
        return _batch_error(err.get("category"), err.get("message"))

    def owner_id_for_email(self, email: str) -> str | None:
        """Resolved once per process and cached (owners change rarely; a restart refreshes)."""
        key = email.strip().lower()
        if key in self._owner_ids:
            return self._owner_ids[key]
        with self._one_lookup(f"email:{key}"):
            return self._owner_id_for_email(key)

    def _owner_id_for_email(self, key: str) -> str | None:
        if key not in self._owner_ids:  # another thread may have looked it up while we waited
            try:
                page = self._call(self._owners.get_page, email=key, limit=1, archived=False)
            except owners.ApiException as exc:
                raise self._translate(exc) from exc
            found = [o for o in page.results or [] if str(o.email or "").lower() == key]
            self._owner_ids[key] = str(found[0].id) if found else None
        return self._owner_ids[key]

    def owner_active(self, owner_id: str) -> bool:
        """Cached for a few minutes: routing asks for every lead, and owners rarely change.

        When HubSpot cannot answer, the last answer stands: an outage must not hold back a lead
        whose owner was active a few minutes ago (the contact write retries on its own).
        """
        with self._one_lookup(f"owner:{owner_id}"):
            return self._owner_active_now(owner_id)

    def _owner_active_now(self, owner_id: str) -> bool:
        cached = self._owner_active.get(owner_id)
        if cached and time.monotonic() - cached[1] < self.settings.owner_cache_seconds:
            return cached[0]
        try:
            owner = self._call(self._owners.get_by_id, owner_id, archived=False)
            active = not bool(owner.archived)
        except owners.ApiException as exc:
            if exc.status != 404:
                return self._stale(cached, self._translate(exc))
            active = False
        except RetriableError as exc:
            return self._stale(cached, exc)
        self._owner_active[owner_id] = (active, time.monotonic())
        return active

    def _one_lookup(self, key: str) -> threading.Lock:
        """One lookup of ``key`` at a time: a worker's many threads missing the cache at once
        make one owner call, not one each (they would spend the call budget on one answer)."""
        with self._lookups_guard:
            return self._lookups.setdefault(key, threading.Lock())

    @staticmethod
    def _stale(cached: tuple[bool, float] | None, error: DeliveryError) -> bool:
        if cached is None or not isinstance(error, RetriableError):
            raise error
        log.info("owner lookup failed (%s); using the answer from %.0f s ago", type(error).__name__, time.monotonic() - cached[1])
        return cached[0]

    def forget_contact(self, email: str) -> None:
        """GDPR delete by email (hubspot.md §1): the contact and its history go; an unknown
        email is blocklisted by HubSpot, which is what a person asking to be forgotten wants."""
        request = self._new(PublicGdprDeleteInput, object_id=email, id_property="email")
        try:
            self._call(self._basic.purge, public_gdpr_delete_input=request)
        except ApiException as exc:
            raise self._translate(exc) from exc

    def pipeline_stages(self, object_type: str, pipeline_id: str) -> dict[str, bool] | None:
        """One pipeline's stages (``pipelines`` reads them all in the same one call)."""
        return self.pipelines(object_type).get(pipeline_id)

    def pipelines(self, object_type: str) -> dict[str, dict[str, bool]]:
        """``GET /crm/v3/pipelines/{object_type}``: every pipeline's stages and their ``metadata.isClosed``."""
        try:
            found = self._call(self._pipelines.get_all, object_type)
        except pipelines_api.ApiException as exc:
            raise self._translate(exc) from exc
        return {
            str(pipeline.id): {
                str(stage.id): str((stage.metadata or {}).get("isClosed", "false")).lower() == "true"
                for stage in pipeline.stages or []
            }
            for pipeline in found.results or []
        }

    def search_modified(
        self,
        object_type: str,
        since_ms: int,
        properties: Sequence[str],
        *,
        among: Mapping[str, Sequence[str]] | None = None,
        after: str | None = None,
        limit: int = 200,
    ) -> FoundPage:
        """One search page, oldest change first; paced by the search window (the call is ``do_search``)."""
        modified = "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"
        filters = [self._new(objects.Filter, property_name=modified, operator="GTE", value=str(since_ms))]
        # IN on string properties wants lowercase values (hubspot.md §1).
        filters += [
            self._new(objects.Filter, property_name=name, operator="IN", values=[v.lower() for v in values])
            for name, values in (among or {}).items()
        ]
        request = self._new(
            objects.PublicObjectSearchRequest,
            filter_groups=[self._new(objects.FilterGroup, filters=filters)],
            sorts=[{"propertyName": modified, "direction": "ASCENDING"}],  # one sort rule only (§1)
            properties=sorted({*properties, modified}),
            limit=limit,
            after=after,
        )
        try:
            page = self._call(self._search_objects.do_search, object_type, public_object_search_request=request)
        except objects.ApiException as exc:
            raise self._translate(exc) from exc
        records = [
            Found(str(hit.id), {k: str(v) for k, v in (hit.properties or {}).items() if v is not None})
            for hit in page.results or []
        ]
        following = page.paging.next.after if page.paging and page.paging.next else None
        return FoundPage(records, str(following) if following else None)

    def property_names(self, object_type: str) -> set[str]:
        try:
            found = self._call(self._properties.get_all, object_type, archived=False)
        except properties_api.ApiException as exc:
            raise self._translate(exc) from exc
        return {str(p.name) for p in found.results or []}

    def create_property(self, object_type: str, name: str, *, unique: bool = False) -> None:
        label = name.replace("_", " ").capitalize()
        group = PROPERTY_GROUPS.get(object_type, "contactinformation")
        body = self._new(
            properties_api.PropertyCreate,
            name=name,
            label=label,
            type="string",
            field_type="text",
            group_name=group,
            has_unique_value=unique,
        )
        try:
            self._call(self._properties.create, object_type, body)
        except properties_api.ApiException as exc:
            raise self._translate(exc) from exc

    # -- follow-ups (bridge/followups.py): the truth at a deadline, and a reassignment --

    def read_record(self, object_type: str, record_id: str, properties: Sequence[str]) -> dict[str, str] | None:
        """One ``GET /crm/v3/objects/{type}/{id}``, paced like every call; None when HubSpot has no such record."""
        try:
            found = self._call(self._objects.get_by_id, object_type, record_id, properties=list(properties), archived=False)
        except objects.ApiException as exc:
            if exc.status == 404:
                return None
            raise self._translate(exc) from exc
        return {k: str(v) for k, v in (found.properties or {}).items() if v not in (None, "")}

    def update_record(self, object_type: str, record_id: str, properties: Mapping[str, str]) -> None:
        body = self._new(objects.SimplePublicObjectInput, properties=dict(properties))
        try:
            self._call(self._objects.update, object_type, record_id, body)
        except objects.ApiException as exc:
            raise self._translate(exc) from exc

    def owner_email(self, owner_id: str) -> str | None:
        try:
            owner = self._call(self._owners.get_by_id, owner_id, archived=False)
        except owners.ApiException as exc:
            if exc.status == 404:
                return None
            raise self._translate(exc) from exc
        return str(owner.email).lower() if owner.email else None

    def record_url(self, object_type: str, record_id: str) -> str:
        type_id = OBJECT_TYPE_IDS.get(object_type, object_type)
        template = self.settings.contact_url
        if object_type != "contacts":
            template = template.replace("/0-1/", f"/{type_id}/").replace(
                "/contacts/{contact_id}", f"/{object_type}/{{contact_id}}"
            )
        return template.format(portal_id=self.settings.portal_id, contact_id=record_id)

    def planned(self, write: ContactWrite) -> dict[str, tuple[str, str]]:
        """Contact property -> (value, merge policy) for a lead: mapped, non-empty values only,
        each cut to what a HubSpot property holds."""
        lead, merge = write.lead, write.merge
        planned: dict[str, tuple[str, str]] = {}
        for field, prop in self.settings.properties.items():
            value = getattr(lead, field, None)
            if prop and value is not None:
                text = value.isoformat() if hasattr(value, "isoformat") else str(value)
                planned[prop] = (text, merge.get(field, OVERWRITE))
        for prop, value in lead.custom.items():
            planned[prop] = (value, merge.get(prop, OVERWRITE))
        for name, prop in self.settings.consent_properties.items():
            if name in lead.consent:
                planned[prop] = (lead.consent[name], OVERWRITE)
        # The one exception to "empty never blanks HubSpot": a new touch replaces the old one whole.
        fields = {field: getattr(lead, field, None) for field in LAST_TOUCH}
        for prop, blank in last_touch_clears(fields, self.settings.properties).items():
            planned.setdefault(prop, (blank, OVERWRITE))
        return {prop: (capped(value), merge) for prop, (value, merge) in planned.items()}

    # -- paths --------------------------------------------------------------------

    def _plan(self, write: ContactWrite) -> Plan:
        """What to send, given what HubSpot has where a merge policy needs to know."""
        planned = self.planned(write)
        careful = sorted(p for p, (_, merge) in planned.items() if merge != OVERWRITE)
        snapshot = write.current
        if snapshot is None and (careful or not (write.known_contact_id or write.lead.email)):
            snapshot = self.lookup_contact(write, careful)
        contact_id = write.known_contact_id or (snapshot.contact_id if snapshot else None)
        props = merged(planned, snapshot.properties if snapshot else {})
        if any(p.startswith(FIRST_TOUCH_PREFIX) and m == SET_IF_EMPTY and p not in props for p, (_, m) in planned.items()):
            record_first_touch_kept()
        props.update(write.extra)
        # Again after merging: an appended value grows with every submission.
        props = {prop: capped(value) for prop, value in props.items()}
        # No id: an email is upserted, a phone-only person created (search already found nobody).
        return Plan(props, contact_id)

    def _upsert_by_email(self, writes: list[ContactWrite], plans: dict[str, Plan]) -> dict[str, ContactResult | DeliveryError]:
        inputs = [
            self._new(
                SimplePublicObjectBatchInputUpsert,
                id=w.lead.email,
                id_property="email",
                properties=plans[w.trace_id].properties,
                object_write_trace_id=w.trace_id,
            )
            for w in writes
        ]
        try:
            response = self._answer(self._batch.upsert, self._new(BatchInputSimplePublicObjectBatchInputUpsert, inputs=inputs))
        except ApiException as exc:
            if exc.status == 409 and len(writes) == 1:
                try:
                    return {writes[0].trace_id: self._update_existing(exc, plans[writes[0].trace_id].properties)}
                except DeliveryError as refused:
                    return {writes[0].trace_id: refused}
            if exc.status in (400, 409) and len(writes) > 1:
                # One input can sink a whole batch (a conflict, or a partial upsert HubSpot refuses
                # by email, hubspot.md §1): write each alone, so a bad row never fails its neighbours.
                return {k: v for w in writes for k, v in self._upsert_by_email([w], plans).items()}
            error = self._translate(exc)
            return {w.trace_id: error for w in writes}
        except DeliveryError as exc:
            return {w.trace_id: exc for w in writes}
        # Results are not in input order (hubspot.md §1): match by lowercased email.
        found = {str((r.get("properties") or {}).get("email", "")).lower(): r for r in response.get("results") or []}
        failed = {
            trace: _batch_error(err.get("category"), err.get("message"))
            for err in response.get("errors") or []
            for trace in ((err.get("context") or {}).get("objectWriteTraceId") or [])
        }
        results: dict[str, ContactResult | DeliveryError] = {}
        for w in writes:
            hit = found.get(str(w.lead.email))
            if hit is not None:
                results[w.trace_id] = self._result(str(hit["id"]), bool(hit.get("new")))
            else:
                results[w.trace_id] = failed.get(w.trace_id) or RetriableError("HubSpot returned no result for this contact")
        return results

    def _write_one(self, write: ContactWrite, plan: Plan) -> ContactResult:
        props = plan.properties
        if plan.contact_id:
            try:
                updated = self._answer(self._basic.update, plan.contact_id, self._new(SimplePublicObjectInput, properties=props))
                # A merged-away id is answered by the surviving contact, under the survivor's id.
                answered = str(updated.get("id") or plan.contact_id)
                return self._result(answered, False, merged_from=plan.contact_id if answered != plan.contact_id else None)
            except ApiException as exc:
                if exc.status == 409:
                    return self._update_existing(exc, props)
                if exc.status != 404:
                    raise self._translate(exc) from exc
                # The known contact was deleted or merged away: fall through and write anew.
            if write.lead.email:
                outcome = self._upsert_by_email([write], {write.trace_id: plan})[write.trace_id]
                if isinstance(outcome, DeliveryError):
                    raise outcome
                return outcome
        # A person with no email has no upsert key: the delivery id is made one, so a create whose
        # answer was lost meets a 409 naming the contact it made (search may not show it yet).
        marked = {**props, DELIVERY_ID_PROPERTY: write.trace_id}
        try:
            created = self._call(
                self._basic.create, self._new(SimplePublicObjectInputForCreate, properties=marked, associations=[])
            )
        except ApiException as exc:
            if exc.status == 409:
                existing = self._update_existing(exc, props)
                # No email to conflict on: the conflict is this delivery's own earlier create.
                return existing if props.get("email") else self._result(existing.contact_id, True)
            raise self._translate(exc) from exc
        return self._result(str(created.id), True)

    def _update_existing(self, conflict: ApiException, props: dict[str, str]) -> ContactResult:
        """A 409 names the contact that already has this email: update it instead."""
        match = EXISTING_ID.search(_body(conflict).get("message", ""))
        if not match:
            raise PermanentError(f"HubSpot 409 without an existing id: {_body(conflict).get('message', '')}")
        contact_id = match.group(1)
        try:
            self._call(self._basic.update, contact_id, self._new(SimplePublicObjectInput, properties=props))
        except ApiException as exc:
            raise self._translate(exc) from exc
        return self._result(contact_id, False)

    def _find_by_phone(self, phone: str | None, names: list[str]) -> tuple[str | None, dict[str, str]]:
        """The contact with this phone (id and the named properties), or (None, {})."""
        if not phone:
            return None, {}
        # HubSpot's calculated phone properties hold the number without its country code.
        national = str(phonenumbers.parse(phone).national_number)
        groups = [
            self._new(FilterGroup, filters=[self._new(Filter, property_name=prop, operator="EQ", value=national)])
            for prop in ("hs_searchable_calculated_phone", "hs_searchable_calculated_mobile_number")
        ]
        request = self._new(PublicObjectSearchRequest, filter_groups=groups, properties=["email", "phone", *names], limit=1)
        try:
            found = self._call(self._search.do_search, public_object_search_request=request)
        except ApiException as exc:
            raise self._translate(exc) from exc
        if not found.results:
            return None, {}
        hit = found.results[0]
        return str(hit.id), {k: v for k, v in (hit.properties or {}).items() if v is not None}

    def _read_many(self, keys: Mapping[str, str], names: list[str], *, by_email: bool) -> dict[str, Snapshot | DeliveryError]:
        """Snapshots for trace_id -> contact id (or email), 100 distinct keys per batch read."""
        distinct = sorted(set(keys.values()))
        found: dict[str, Snapshot | DeliveryError] = {}
        for start in range(0, len(distinct), BATCH_LIMIT):
            chunk = distinct[start : start + BATCH_LIMIT]
            try:
                found.update(self._read(chunk, names, by_email=by_email))
            except DeliveryError as exc:
                found.update(dict.fromkeys(chunk, exc))
        return {trace: found.get(key, Snapshot(None)) for trace, key in keys.items()}

    def _read(self, keys: list[str], names: list[str], *, by_email: bool) -> dict[str, Snapshot]:
        """One ``batch/read``; keys HubSpot has no contact for are left out (its 207 lists them)."""
        request = self._new(
            BatchReadInputSimplePublicObjectId,
            properties=sorted({*names, "email"}) if by_email else names,
            id_property="email" if by_email else None,
            inputs=[self._new(SimplePublicObjectId, id=key) for key in keys],
            properties_with_history=[],
        )
        try:
            response = self._call(self._batch.read, request, archived=False)
        except ApiException as exc:
            raise self._translate(exc) from exc
        # Only "not found" means new: any other row error would make a known contact look new.
        other = [err for err in getattr(response, "errors", None) or [] if err.category != "OBJECT_NOT_FOUND"]
        if other:
            raise _batch_error(other[0].category, other[0].message)
        snapshots: dict[str, Snapshot] = {}
        # Results are not in input order (hubspot.md §1): match by lowercased email or by id.
        for hit in response.results or []:
            props = {k: v for k, v in (hit.properties or {}).items() if v is not None}
            props.pop("hs_object_id", None)
            key = str(props.get("email", "")).lower() if by_email else str(hit.id)
            if "email" not in names:
                props.pop("email", None)
            snapshots[key] = Snapshot(str(hit.id), props)
        return snapshots

    # -- plumbing -----------------------------------------------------------------

    def _record_input(self, properties: Mapping[str, str], links: Sequence[Link]) -> dict[str, Any]:
        """Properties and inline associations of a deal, lead, note or task to create."""
        new = self._new
        associations = [
            new(
                objects.PublicAssociationsForObject,
                to=new(objects.PublicObjectId, id=link.to_id),
                types=[new(objects.AssociationSpec, association_category="HUBSPOT_DEFINED", association_type_id=link.type_id)],
            )
            for link in links
        ]
        # Notes and tasks quote the form's raw answers: cleaned and capped here like contact properties.
        clean = {name: capped(clean_text(value, multiline=True)) for name, value in properties.items()}
        return {"properties": clean, "associations": associations}

    def _new(self, model: Callable[..., M], **fields: Any) -> M:
        """An SDK model sharing its api client's configuration (see ``__init__``)."""
        return model(**fields, local_vars_configuration=self._configs[model.__module__.partition(".models.")[0]])

    def _result(self, contact_id: str, created: bool, merged_from: str | None = None) -> ContactResult:
        url = self.settings.contact_url.format(portal_id=self.settings.portal_id, contact_id=contact_id)
        return ContactResult(contact_id=contact_id, created=created, url=url, merged_from=merged_from)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One SDK call with a timeout and a few quick in-process retries for blips.

        429s and longer outages are not retried here: they go back to the ledger, which
        schedules the next attempt without holding a worker thread.
        """
        creates = getattr(fn, "__name__", "") == "create"
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.inprocess_attempts),
            wait=wait_exponential(multiplier=0.2, max=2),
            # A create whose answer timed out may have been applied: asking again at once would
            # make it twice, so only a request that never reached HubSpot is retried here.
            retry=retry_if_exception(_never_sent if creates else _is_blip),
            reraise=True,
        )
        # A batch call (up to 100 rows) is given longer before it counts as unanswered.
        timeout = self.settings.timeout_seconds * (3 if "batch" in type(getattr(fn, "__self__", None)).__name__.lower() else 1)
        try:
            return retrying(self._paced, fn, *args, _request_timeout=timeout, **kwargs)
        except urllib3.exceptions.HTTPError as exc:
            # urllib3 wraps the connection errors it retried itself in MaxRetryError.
            if _never_sent(exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc):
                raise RetriableError(f"HubSpot unreachable ({type(exc).__name__})") from exc
            # Sent, then nothing came back (a dropped connection, a read timeout): maybe applied.
            raise UnansweredError(f"HubSpot did not answer ({type(exc).__name__})") from exc

    def _answer(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``_call``, its answer read as plain JSON instead of SDK models: for the calls every lead
        makes (contact upsert and update, record creates), of whose answers we read a few fields.
        The SDK turns each ``createdAt``/``updatedAt`` into a datetime with dateutil's generic
        parser and every object into a model: a sixth of a draining worker's CPU."""
        raw = self._call(fn, *args, _preload_content=False, **kwargs)
        try:
            data = json.loads(raw.data or b"{}")
        except urllib3.exceptions.HTTPError as exc:  # the body is read here, after _call: the same as no answer
            raise UnansweredError(f"HubSpot did not answer ({type(exc).__name__})") from exc
        except ValueError as exc:
            raise UnansweredError("HubSpot answered with a body that is not JSON") from exc
        finally:
            raw.release_conn()
        return data if isinstance(data, dict) else {}

    def _paced(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One HTTP request inside the shared call budget, which HubSpot's answer then corrects."""
        pacer = self.pacer
        if pacer is not None:
            pacer.acquire(search=fn.__name__ == "do_search")
        endpoint = getattr(fn, "__qualname__", fn.__name__)
        try:
            result = fn(*args, **kwargs)
        except API_ERRORS as exc:
            record_hubspot_request(endpoint, exc.status or 0)
            if exc.status == 429:
                policy = str(_body(exc).get("policyName", ""))
                record_rate_limited("hubspot", policy)
                if pacer is not None:
                    # SECONDLY is the search limit (hubspot.md §4); anything else spent the burst window.
                    pacer.spent(search=policy == "SECONDLY")
            elif pacer is not None:
                pacer.observe(exc.headers)
            raise
        record_hubspot_request(endpoint, 200)
        if pacer is not None:
            # The SDK keeps the last raw answer on the api client; racy across threads, but any
            # recent answer's count is a true reading of HubSpot's window.
            answer = getattr(getattr(getattr(fn, "__self__", None), "api_client", None), "last_response", None)
            pacer.observe(answer.getheaders() if answer is not None else None)
        return result

    @staticmethod
    def _translate(exc: Any) -> DeliveryError:
        body = _body(exc)
        # HubSpot quotes the offending value (often the email): redacted before it is kept anywhere.
        message = redact(str(body.get("message") or exc.reason or "no message"))
        status = exc.status or 0
        if status == 429:
            wait = RATE_LIMIT_WAIT.get(body.get("policyName", ""), 10.0)
            # Throttled, not failed: the delivery waits out the window and keeps its attempt.
            return ThrottledError(f"HubSpot 429 {body.get('policyName', 'rate limit')}: {message}", retry_after=wait)
        if status in UNKNOWN_OUTCOME_STATUSES:
            return UnansweredError(f"HubSpot {status}: {message}")
        if status in RETRIABLE_STATUSES:
            return RetriableError(f"HubSpot {status}: {message}")
        return PermanentError(f"HubSpot {status} {body.get('category', '')}: {message}".replace("  ", " "))


@dataclass(frozen=True)
class Plan:
    properties: dict[str, str]
    # The contact to update by id (known to the ledger, or found by phone); None: upsert or create.
    contact_id: str | None


def capped(value: str) -> str:
    """A value HubSpot accepts: at most PROPERTY_LIMIT characters, a visible marker where cut."""
    if len(value) <= PROPERTY_LIMIT:
        return value
    return value[: PROPERTY_LIMIT - len(TRUNCATED)] + TRUNCATED


def _never_sent(exc: BaseException) -> bool:
    """Failures that prove the request was not processed: safe to send again at once."""
    if isinstance(exc, API_ERRORS):
        return exc.status == 503  # refused before any work (a 502 or 504 may have been processed)
    return isinstance(exc, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def _is_blip(exc: BaseException) -> bool:
    if isinstance(exc, API_ERRORS):
        return (exc.status or 0) >= 500
    return isinstance(exc, urllib3.exceptions.HTTPError)


def _body(exc: Any) -> dict[str, Any]:
    raw = exc.body
    try:
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw or "{}")
    except (ValueError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}


def _batch_error(category: str | None, detail: str | None) -> DeliveryError:
    message = redact(f"HubSpot {category or 'error'}: {detail}")
    if category in {"RATE_LIMITS", "INTERNAL_ERROR", "LOCKED"}:
        return RetriableError(message)
    return PermanentError(message)


def _chunks(writes: list[ContactWrite]) -> Iterator[list[ContactWrite]]:
    """Batches of at most 100 with no email twice: HubSpot rejects a whole batch with duplicate ids."""
    pending = list(writes)
    while pending:
        chunk: list[ContactWrite] = []
        seen: set[str] = set()
        for w in list(pending):
            if len(chunk) < BATCH_LIMIT and str(w.lead.email) not in seen:
                seen.add(str(w.lead.email))
                chunk.append(w)
                pending.remove(w)
        yield chunk
