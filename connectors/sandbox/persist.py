"""The sandbox's state file: what ``leadbridge sandbox --state FILE`` keeps across restarts.

The CRM store (records, property definitions, owners, id counters), Slack messages, Slack users
and the last message ts are written as JSON after every mutating request, before its answer
leaves, so an id a client has seen is on disk even if the process is then killed with SIGKILL. A
restarted sandbox therefore never hands out an id it handed out before (the ledger remembers
them). The request log, faults and rate-limit window are not kept. Writes are atomic: a temp file
in the same folder, flushed and fsynced, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from connectors.sandbox.crm import CrmStore
from connectors.sandbox.records import Record, Version

FORMAT_VERSION = 1


class StateFileError(Exception):
    """The state file exists but cannot be read back; starting empty would reuse ids."""


def dump_crm(crm: CrmStore) -> dict[str, Any]:
    """The CRM store as JSON; each record keeps its latest version only (history only serves search lag)."""
    return {
        "records": {
            object_type: [
                {
                    "id": r.id,
                    "created_at": r.created_at,
                    "updated_at": r.versions[-1].updated_at,
                    "properties": r.properties,
                    "associations": r.associations,
                }
                for r in records.values()
            ]
            for object_type, records in crm.records.items()
        },
        "property_definitions": crm.property_definitions,
        "owners": crm.owners,
        "pipelines": crm.pipelines,
        "merged_into": crm.merged_into,
        "next_record_id": crm.next_record_id,
        "next_owner_id": crm.next_owner_id,
    }


def load_crm(data: dict[str, Any]) -> CrmStore:
    crm = CrmStore()
    for object_type, items in data["records"].items():
        crm.records[object_type] = {
            item["id"]: Record(
                id=item["id"],
                object_type=object_type,
                created_at=item["created_at"],
                # Written before this process started, so visible to search at once.
                versions=[Version(0.0, item["updated_at"], item["properties"])],
                associations=item["associations"],
            )
            for item in items
        }
    crm.property_definitions = data["property_definitions"]
    crm.owners = data["owners"]
    # Both absent from state files written before the sandbox kept them.
    crm.pipelines = data.get("pipelines", {})
    crm.merged_into = data.get("merged_into", {})
    crm.next_record_id = int(data["next_record_id"])
    crm.next_owner_id = int(data["next_owner_id"])
    return crm


class StateFile:
    """One JSON file holding a sandbox's durable state."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        """The saved state, or None when there is no file yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"{self.path}: cannot read ({exc.strerror})") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateFileError(f"{self.path}: not valid JSON (line {exc.lineno}); use --reset to start clean") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise StateFileError(f"{self.path}: not a sandbox state file (format {FORMAT_VERSION}); use --reset to start clean")
        return data

    def write(self, data: dict[str, Any]) -> None:
        """Replace the file atomically, so a kill mid-write leaves the previous state whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"format": FORMAT_VERSION, **data}, handle, separators=(",", ":"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def delete(self) -> bool:
        """Remove the file; True if there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
