"""The base of every config model: unknown keys are errors, so a YAML typo fails loudly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")
