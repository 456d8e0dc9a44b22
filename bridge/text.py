"""Text hygiene for values that came from a form: what the CRM and the chat may be given.

- ``clean_text`` strips what no person typed on purpose: control characters (NUL, BEL,
  terminal colour codes...), lone surrogates (which no HTTP client can encode) and the
  invisible bidirectional overrides that make text read backwards. Multi-line fields
  keep their newlines and tabs.
- ``escape_mrkdwn`` is the one escaper for lead values in Slack text: ``&``, ``<`` and
  ``>`` become entities, so ``<!channel>`` or ``<https://evil.example|Click here>``
  arrive as text, not as a ping or a link.
"""

from __future__ import annotations

import re

# ANSI/VT escape sequences as a whole (ESC [ 31 m), then any other C0/C1 control or DEL.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]|[\ud800-\udfff]|[\u202a-\u202e\u2066-\u2069]")
_LINE_CONTROLS = re.compile(r"[\t\n]")


def clean_text(text: str, *, multiline: bool = False) -> str:
    """``text`` without control characters; ``\\n`` and ``\\t`` stay where ``multiline``."""
    text = _ESCAPES.sub("", text)
    if multiline:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS.sub("", text)
    return text if multiline else _LINE_CONTROLS.sub(" ", text)


def escape_mrkdwn(text: str) -> str:
    """A lead value made inert for Slack: only these three characters are special there."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
