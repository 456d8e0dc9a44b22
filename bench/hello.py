"""The baseline for intake throughput: a bare Flask app that reads the body and answers a small
JSON 200, served by ``bench.stack.hello`` on the intake's own gunicorn settings."""

from __future__ import annotations

from flask import Flask, request

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.post("/hooks/<source>")
def hook(source: str) -> tuple[dict[str, str], int]:
    request.get_data()  # read the body, as intake must before it can answer
    return {"status": "accepted", "source": source}, 200
