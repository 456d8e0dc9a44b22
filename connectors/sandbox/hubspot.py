"""The HubSpot CRM v3 routes: objects (create, read, update, search, batch create, batch read and
contact upsert with 207 partial answers), property definitions and owners."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import jsonify, request
from flask.typing import ResponseReturnValue

from connectors.sandbox.errors import HubSpotError
from connectors.sandbox.records import normalize_properties, utc_now_iso
from connectors.sandbox.search import default_read_properties
from connectors.sandbox.state import state

BATCH_LIMIT = 100


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise HubSpotError(400, "Invalid input JSON: the body must be a JSON object")
    return body


def batch_inputs(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(item, dict) for item in inputs):
        raise HubSpotError(400, "Invalid input JSON: inputs must be a list of objects")
    if len(inputs) > BATCH_LIMIT:
        raise HubSpotError(400, f"Batch input of {len(inputs)} exceeds the limit of {BATCH_LIMIT}")
    return inputs


def run_batch(
    inputs: list[dict[str, Any]],
    check: Callable[[dict[str, Any]], object],
    apply: Callable[[dict[str, Any]], dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write a batch the way HubSpot does.

    Without a unique ``objectWriteTraceId`` on every input, one invalid input fails the whole
    request and nothing is written; with them, valid inputs are written and each invalid one
    becomes an error entry naming its trace id. ``check`` validates an input without writing;
    ``apply`` validates again as it writes, since earlier inputs can change the answer.
    """
    trace_ids = [item.get("objectWriteTraceId") for item in inputs]
    traced = all(trace_ids) and len(set(trace_ids)) == len(trace_ids)
    if not traced:
        for item in inputs:
            check(item)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for item in inputs:
        try:
            result = apply(item)
        except HubSpotError as exc:
            if not traced:
                raise
            errors.append(exc.batch_error(str(item["objectWriteTraceId"])))
            continue
        if traced:
            result["objectWriteTraceId"] = item["objectWriteTraceId"]
        results.append(result)
    return results, errors


def batch_response(
    results: list[dict[str, Any]], errors: list[dict[str, Any]], started_at: str, status: int
) -> ResponseReturnValue:
    body: dict[str, Any] = {"status": "COMPLETE", "results": results}
    if errors:
        body.update(numErrors=len(errors), errors=errors)
    body.update(startedAt=started_at, completedAt=utc_now_iso())
    return jsonify(body), 207 if errors else status


def requested_properties() -> list[str]:
    # SDK v12 repeats ``properties=`` per name; hand-written clients send one comma list.
    return [n for value in request.args.getlist("properties") for n in value.split(",") if n]


def crm_create(object_type: str) -> ResponseReturnValue:
    with state().lock:
        record = state().crm.create(object_type, json_body())
        return jsonify(record.to_json()), 201


def traced(result: dict[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
    """A batch result carries its input's ``objectWriteTraceId``, so callers can match it."""
    return {**result, "objectWriteTraceId": item["objectWriteTraceId"]} if item.get("objectWriteTraceId") else result


def refuse_unique_conflicts(object_type: str, inputs: list[dict[str, Any]]) -> None:
    """A batch create that would repeat a ``hasUniqueValue`` value (held already, or twice in the
    batch) is refused whole with one 409 naming the first conflict, as HubSpot answers a batch
    create with existing emails (hubspot.md §2: "reports only the first conflict")."""
    crm = state().crm
    seen: dict[tuple[str, str], int] = {}
    for item in inputs:
        properties = normalize_properties(item.get("properties"))
        crm.check_unique(object_type, properties, None)
        definitions = crm.property_definitions.get(object_type, {})
        for name, value in properties.items():
            if value and definitions.get(name, {}).get("hasUniqueValue"):
                if (name, value) in seen:
                    raise HubSpotError(409, f"Duplicate unique value in batch input for {name}")
                seen[(name, value)] = 1


def crm_batch_create(object_type: str) -> ResponseReturnValue:
    started_at = utc_now_iso()
    inputs = batch_inputs(json_body())
    with state().lock:
        crm = state().crm
        refuse_unique_conflicts(object_type, inputs)
        results, errors = run_batch(
            inputs,
            lambda item: crm.prepare_create(object_type, item),
            lambda item: traced(crm.create(object_type, item).to_json(), item),
        )
        return batch_response(results, errors, started_at, 201)


def crm_batch_upsert(object_type: str) -> ResponseReturnValue:
    started_at = utc_now_iso()
    if object_type != "contacts":
        raise HubSpotError(400, f"The sandbox upserts contacts only, not {object_type}")
    inputs = batch_inputs(json_body())
    ids = [str(item.get("id", "")).strip().lower() for item in inputs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise HubSpotError(
            400,
            f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]. IDs must be unique",
            context={"ids": duplicates},
        )
    with state().lock:
        crm = state().crm
        results, errors = run_batch(inputs, crm.prepare_upsert, crm.upsert_contact)
        return batch_response(results, errors, started_at, 200)


def crm_batch_read(object_type: str) -> ResponseReturnValue:
    """Read many records by id or by a unique property (contacts: ``idProperty: email``).

    Ids that match nothing do not fail the request: HubSpot answers 207 and lists them in one
    OBJECT_NOT_FOUND error.
    """
    started_at = utc_now_iso()
    body = json_body()
    inputs = batch_inputs(body)
    id_property = body.get("idProperty")
    names = [str(n) for n in body.get("properties") or []] or default_read_properties(object_type)
    results: list[dict[str, Any]] = []
    missing: list[str] = []
    with state().lock:
        for item in inputs:
            key = str(item.get("id", ""))
            try:
                record = state().crm.find(object_type, key, id_property)
            except HubSpotError:
                missing.append(key)
                continue
            results.append(record.to_json(names=names))
    errors = []
    if missing:
        label = object_type.rstrip("s").upper()
        message = f"Could not get some {label} objects, they may be deleted or not exist. Check that ids are valid."
        errors.append({"status": "error", "category": "OBJECT_NOT_FOUND", "message": message, "context": {"ids": missing}})
    return batch_response(results, errors, started_at, 200)


def crm_search(object_type: str) -> ResponseReturnValue:
    body = json_body()
    with state().lock:
        moment = time.monotonic() - state().search_lag
        return jsonify(state().crm.search(object_type, body, moment))


def crm_get(object_type: str, object_id: str) -> ResponseReturnValue:
    with state().lock:
        record = state().crm.find(object_type, object_id, request.args.get("idProperty"))
        names = requested_properties() or default_read_properties(object_type)
        return jsonify(record.to_json(names=names))


def crm_gdpr_delete() -> ResponseReturnValue:
    """``POST /crm/v3/objects/contacts/gdpr-delete``: gone for good; an unknown email answers
    the same (HubSpot then blocklists the address)."""
    body = json_body()
    with state().lock:
        crm = state().crm
        try:
            record = crm.find("contacts", str(body.get("objectId", "")), body.get("idProperty"))
        except HubSpotError:
            return "", 204
        crm.remove("contacts", record.id)
    return "", 204


def crm_merge(object_type: str) -> ResponseReturnValue:
    """``POST /crm/v3/objects/{type}/merge`` ``{primaryObjectId, objectIdToMerge}``: the merged
    record is gone; the primary keeps its values and takes the other's where it has none."""
    body = json_body()
    with state().lock:
        crm = state().crm
        primary = crm.find(object_type, str(body.get("primaryObjectId", "")), None)
        merged = crm.find(object_type, str(body.get("objectIdToMerge", "")), None)
        if primary.id == merged.id:
            raise HubSpotError(400, "Cannot merge an object with itself")
        taken = {k: v for k, v in merged.properties.items() if v and not primary.properties.get(k)}
        crm.remove(object_type, merged.id)
        crm.merged_into.setdefault(object_type, {})[merged.id] = primary.id
        crm.update(primary, {"properties": {k: v for k, v in taken.items() if k not in SYSTEM_KEYS}})
        return jsonify(primary.to_json())


SYSTEM_KEYS = {"hs_object_id", "createdate", "lastmodifieddate", "hs_lastmodifieddate"}


def crm_update(object_type: str, object_id: str) -> ResponseReturnValue:
    with state().lock:
        crm = state().crm
        record = crm.find(object_type, object_id, request.args.get("idProperty"))
        return jsonify(crm.update(record, json_body()).to_json())


def properties_list(object_type: str) -> ResponseReturnValue:
    with state().lock:
        definitions = state().crm.property_definitions.get(object_type, {})
        return jsonify({"results": list(definitions.values())})


def properties_create(object_type: str) -> ResponseReturnValue:
    with state().lock:
        return jsonify(state().crm.add_property(object_type, json_body())), 201


# HubSpot's default deal pipeline (stage ids as every portal has them), with isClosed metadata.
DEFAULT_DEAL_STAGES = [
    ("appointmentscheduled", "Appointment Scheduled", "0.2", False),
    ("qualifiedtobuy", "Qualified To Buy", "0.4", False),
    ("presentationscheduled", "Presentation Scheduled", "0.6", False),
    ("decisionmakerboughtin", "Decision Maker Bought-In", "0.8", False),
    ("contractsent", "Contract Sent", "0.9", False),
    ("closedwon", "Closed Won", "1.0", True),
    ("closedlost", "Closed Lost", "0.0", True),
]


def pipelines_list(object_type: str) -> ResponseReturnValue:
    """``GET /crm/v3/pipelines/{objectType}``: the default pipeline for deals, then the ones created."""
    found = [default_deal_pipeline()] if object_type == "deals" else []
    with state().lock:
        found += state().crm.pipelines.get(object_type, [])
    return jsonify({"results": found})


def default_deal_pipeline() -> dict[str, Any]:
    stamp = utc_now_iso()
    stages = [
        {
            "id": stage_id,
            "label": label,
            "displayOrder": order,
            "metadata": {"isClosed": "true" if closed else "false", "probability": probability},
            "createdAt": stamp,
            "updatedAt": stamp,
            "archived": False,
        }
        for order, (stage_id, label, probability, closed) in enumerate(DEFAULT_DEAL_STAGES)
    ]
    return {
        "id": "default",
        "label": "Sales Pipeline",
        "displayOrder": 0,
        "stages": stages,
        "createdAt": stamp,
        "updatedAt": stamp,
        "archived": False,
    }


def pipelines_create(object_type: str) -> ResponseReturnValue:
    """``POST /crm/v3/pipelines/{objectType}`` ``{label, stages: [{label, metadata: {isClosed}}]}``.

    HubSpot assigns the ids; the sandbox also takes ``id`` on the pipeline and its stages, so a
    test can name them. ``metadata.isClosed`` is kept as HubSpot answers it, the string "true"/"false".
    """
    body = json_body()
    raw_stages = body.get("stages")
    if not body.get("label") or not isinstance(raw_stages, list) or not raw_stages:
        raise HubSpotError(400, "Invalid input JSON: a pipeline needs a label and stages")
    stamp = utc_now_iso()
    with state().lock:
        crm = state().crm
        crm.next_record_id += 1
        pipeline_id = str(body.get("id") or crm.next_record_id - 1)
        stages = []
        for order, raw in enumerate(raw_stages):
            crm.next_record_id += 1
            closed = str((raw.get("metadata") or {}).get("isClosed", "false")).lower() == "true"
            stages.append(
                {
                    "id": str(raw.get("id") or crm.next_record_id - 1),
                    "label": str(raw.get("label") or f"Stage {order + 1}"),
                    "displayOrder": int(raw.get("displayOrder", order)),
                    "metadata": {**(raw.get("metadata") or {}), "isClosed": "true" if closed else "false"},
                    "createdAt": stamp,
                    "updatedAt": stamp,
                    "archived": False,
                }
            )
        pipeline = {
            "id": pipeline_id,
            "label": str(body["label"]),
            "displayOrder": int(body.get("displayOrder", 1)),
            "stages": stages,
            "createdAt": stamp,
            "updatedAt": stamp,
            "archived": False,
        }
        crm.pipelines.setdefault(object_type, []).append(pipeline)
    return jsonify(pipeline), 201


def owners_list() -> ResponseReturnValue:
    email = request.args.get("email", "").lower()
    archived = request.args.get("archived", "false").lower() == "true"
    limit = int(request.args.get("limit") or 100)
    offset = int(request.args.get("after") or 0)
    with state().lock:
        owners = [o for o in state().crm.owners if o["archived"] == archived and (not email or str(o["email"]).lower() == email)]
    answer: dict[str, Any] = {"results": owners[offset : offset + limit]}
    if offset + limit < len(owners):
        answer["paging"] = {"next": {"after": str(offset + limit)}}
    return jsonify(answer)


def owner_get(owner_id: str) -> ResponseReturnValue:
    key = "userId" if request.args.get("idProperty") == "userId" else "id"
    with state().lock:
        for owner in state().crm.owners:
            if str(owner[key]) == owner_id:
                return jsonify(owner)
    raise HubSpotError(404, f"Owner {owner_id} not found", context={"id": [owner_id]})


# The far side's type id of the HubSpot-defined associations the relay makes (hubspot.md §5).
INVERSE_ASSOCIATION_TYPES = {3: 4, 202: 201, 204: 203, 578: 577, 214: 213, 216: 215}


def associations_list(object_type: str, object_id: str, to_object_type: str) -> ResponseReturnValue:
    """``GET /crm/v4/objects/{type}/{id}/associations/{toType}``: the records of ``toType`` linked to
    this one, read from the inline associations they were created with (oldest first, 500 a page)."""
    limit = min(int(request.args.get("limit") or 500), 500)
    offset = int(request.args.get("after") or 0)
    with state().lock:
        crm = state().crm
        crm.find(object_type, object_id, None)  # 404 for a record that does not exist
        linked = [
            {
                "toObjectId": int(record.id),
                "associationTypes": [
                    {
                        "category": a["associationCategory"],
                        "typeId": INVERSE_ASSOCIATION_TYPES.get(a["associationTypeId"], 0),
                        "label": None,
                    }
                    for a in record.associations
                    if a["toObjectId"] == object_id and a["toObjectType"] == object_type
                ],
            }
            for record in crm.objects(to_object_type).values()
        ]
    linked = [item for item in linked if item["associationTypes"]]
    answer: dict[str, Any] = {"results": linked[offset : offset + limit]}
    if offset + limit < len(linked):
        answer["paging"] = {"next": {"after": str(offset + limit)}}
    return jsonify(answer)
