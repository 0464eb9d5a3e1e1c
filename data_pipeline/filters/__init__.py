"""Quality filters: named rules over a document's text, applied after cleaning, each counted in the manifest.

One module per rule, one registry (`RULES`, in the order rules run): a
module has a pydantic `Settings` (thresholds, and `enabled`) and
`check(text, settings) -> (text, reason | None)`; a rule may also cut the
text (C4 drops lines), and then says so with `CHANGES_TEXT = True`. A
document a rule removes is counted under `<rule>.<reason>` in its source's
`filtered` counts, and the first rule that removes a document is the only
one counted.

`data.cleaning.preset` switches on the rules and thresholds of a published
pipeline; any setting given under `data.cleaning.filters` wins over it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Literal

from pydantic import BaseModel, ConfigDict, create_model

from data_pipeline.filters import c4, fineweb, gopher_quality, gopher_repetition, language

# The order of FineWeb's own pipeline (datatrove): language, Gopher repetition, Gopher quality, C4, FineWeb.
RULES: dict[str, ModuleType] = {
    "language": language,
    "gopher_repetition": gopher_repetition,
    "gopher_quality": gopher_quality,
    "c4": c4,
    "fineweb": fineweb,
}

# Rules that cut the text as well as judge it (CHANGES_TEXT): a pass that knows the verdicts still runs these.
TEXT_CHANGING = frozenset(name for name, rule in RULES.items() if getattr(rule, "CHANGES_TEXT", False))

Preset = Literal["none", "gopher", "c4", "fineweb"]
PRESETS: dict[str, dict[str, dict]] = {
    "none": {},
    "gopher": {"gopher_repetition": {"enabled": True}, "gopher_quality": {"enabled": True}},
    "c4": {"c4": {"enabled": True}},
    # FineWeb keeps C4's line rules but not its terminal-punctuation one (their ablations: it removed too much).
    "fineweb": {
        "gopher_repetition": {"enabled": True},
        "gopher_quality": {"enabled": True},
        "c4": {"enabled": True, "terminal_punctuation": False},
        "fineweb": {"enabled": True},
    },
}

FiltersConfig: type[BaseModel] = create_model(
    "FiltersConfig",
    __config__=ConfigDict(extra="forbid"),
    **{name: (rule.Settings, rule.Settings()) for name, rule in RULES.items()},
)


def with_preset(preset: str, filters: dict | None) -> dict:
    """The filters section: the preset's settings, with the user's own on top (an unknown preset is left to pydantic)."""
    merged: dict = {name: dict(settings) for name, settings in PRESETS.get(preset, {}).items()}
    for name, settings in (filters or {}).items():
        # A value that is not a section is passed on as it is, for pydantic to name the field in its error.
        merged[name] = {**merged.get(name, {}), **settings} if isinstance(settings, dict) else settings
    return merged


def active_rules(filters: BaseModel) -> list[tuple[str, Callable, BaseModel]]:
    """(name, check, settings) of every enabled rule, in the order they run."""
    return [
        (name, rule.check, getattr(filters, name)) for name, rule in RULES.items() if getattr(filters, name).enabled
    ]


def apply_rules(text: str, rules: list[tuple[str, Callable, BaseModel]]) -> tuple[str, str | None]:
    """The text the rules leave, and `<rule>.<reason>` of the first rule that removes it."""
    for name, check, settings in rules:
        text, reason = check(text, settings)
        if reason is not None:
            return text, f"{name}.{reason}"
    return text, None
