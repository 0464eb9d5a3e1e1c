"""What every quality rule has: a settings model whose `enabled` the preset or the user sets."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RuleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="apply this rule (data.cleaning.preset switches rules on)")
