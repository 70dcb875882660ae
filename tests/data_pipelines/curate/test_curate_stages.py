"""Per-document stages against hand-built cases and brute-force references of the published rules."""

from __future__ import annotations

import random
import sys
import types

import numpy as np
import pytest

from data_pipelines.curate.document import Document
from data_pipelines.curate.segment import norm_words
from data_pipelines.curate.stages import build_stage
from data_pipelines.curate.stages.langid import LangIdParams
from data_pipelines.curate.stages.pii import PiiParams, iban_ok, luhn_ok
from data_pipelines.curate.stages.c4 import C4Params
from data_pipelines.curate.stages.fineweb import FineWebParams
from data_pipelines.curate.stages.gopher_quality import GopherQualityParams
from data_pipelines.curate.stages.length import LengthParams
from data_pipelines.curate.stages.gopher_repetition import GopherRepetitionParams, dup_ngram_chars, ngram_hashes, top_ngram_chars
from data_pipelines.curate.stages.sft_format import SftFormatParams
from data_pipelines.curate.stages.toxicity import ToxicityParams
from data_pipelines.curate.stats import StageStats

PROSE = ("The committee met on a cold morning to review the plans for the new library. Members of the public "
         "had sent many letters, and most of them asked for longer opening hours and a quiet room for study. "
         "The architect explained that the building would have large windows, so that readers could work with "
         "natural light for most of the day. After a long discussion, the committee agreed to publish the plans "
         "and to invite comments from everyone who lives in the town before the end of the month.")


def run(name, params, text, **meta) -> tuple[str | None, Document, StageStats]:
    stage = build_stage(name, params)
    doc = Document("d", text, dict(meta))
    st = StageStats()
    return stage.process(doc, st), doc, st


# ---------------------------------------------------------------- Gopher quality


def test_gopher_quality_each_rule():
    p = GopherQualityParams()
    assert run("gopher_quality", p, PROSE)[0] is None
    assert run("gopher_quality", p, "The short one with the text.")[0] == "too_few_words"
    assert run("gopher_quality", p, " ".join(["a", "of", "the", "to", "an"] * 20))[0] == "mean_word_length_low"
    assert run("gopher_quality", p, " ".join(["internationalization", "characteristically", "the"] * 30))[0] == "mean_word_length_high"
    assert run("gopher_quality", p, PROSE + " #tag #news #love #life #art #photo #travel #food #music #fun" * 2)[0] == "symbol_word_ratio"
    bullets = "\n".join(f"• item number {i} for the list of things to have" for i in range(20))
    assert run("gopher_quality", p, bullets)[0] == "bullet_lines"
    ellipsis = "\n".join(f"and then the story of line {i} goes on and on ..." for i in range(20))
    assert run("gopher_quality", p, ellipsis + "\n" + PROSE)[0] in ("ellipsis_lines", "symbol_word_ratio")
    numbers = PROSE + " " + " ".join(str(i) for i in range(60))
    assert run("gopher_quality", p, numbers)[0] == "alpha_words_ratio"
    no_stop = " ".join(["cheap", "watches", "online", "discount", "replica", "sale"] * 12)
    assert run("gopher_quality", p, no_stop)[0] == "stop_words"
    # every rule can be switched off
    off = GopherQualityParams(min_words=None, min_mean_word_length=None, min_stop_words=None)
    assert run("gopher_quality", off, "The short one")[0] is None
    # punctuation tokens are words without a letter, unless the share is taken of words
    verse = "\n".join(["Alas, poor Yorick! Gentle, noble, honest, brave; sweet prince, farewell: remember the king, and stay with me!"] * 6)
    assert run("gopher_quality", p, verse)[0] == "alpha_words_ratio"
    assert run("gopher_quality", GopherQualityParams(alpha_ratio_of="words"), verse)[0] is None


# ---------------------------------------------------------------- Gopher repetition: brute-force reference


def ref_dup_ngram_chars(words: list[str], n: int) -> int:
    """Gopher's duplicated n-gram characters by the reference walk: a repeat counts, then is jumped past."""
    seen, total, i = set(), 0, 0
    while i <= len(words) - n:
        g = tuple(words[i:i + n])
        if g in seen:
            total += sum(map(len, g))
            i += n
        else:
            seen.add(g)
            i += 1
    return total


def ref_top_ngram_chars(words: list[str], n: int) -> int:
    """Characters of the most frequent n-gram (the first seen among ties) written with spaces, times its count."""
    counts: dict[tuple, int] = {}
    for i in range(len(words) - n + 1):
        g = tuple(words[i:i + n])
        counts[g] = counts.get(g, 0) + 1
    top = max(counts.values())
    first = next(g for g, c in counts.items() if c == top)  # dicts keep first-seen order
    return len(" ".join(first)) * top


def test_ngram_counts_match_brute_force():
    rng = random.Random(3)
    vocab = ["alpha", "be", "cat", "delta", "e", "foxtrot", "go", "hotel"]
    for trial in range(60):
        words = [rng.choice(vocab[: rng.randint(2, 8)]) for _ in range(rng.randint(12, 90))]
        ids = np.array([hash(w) for w in words], dtype=np.int64).view(np.uint64)
        lens = np.array([len(w) for w in words])
        csum = np.concatenate(([0], np.cumsum(lens)))
        for n in (2, 3, 4):
            got = top_ngram_chars(ngram_hashes(ids, n), csum[n:] - csum[:-n] + n - 1)
            assert got == ref_top_ngram_chars(words, n), (trial, n)
        for n in range(5, 11):
            got = dup_ngram_chars(ngram_hashes(ids, n), n, csum[n:] - csum[:-n])
            assert got == ref_dup_ngram_chars(words, n), (trial, n)


def test_gopher_repetition_rules():
    p = GopherRepetitionParams()
    assert run("gopher_repetition", p, PROSE)[0] is None
    lines = "\n".join(["Buy now and save big today"] * 5 + ["A different line of text here", "And one more"])
    assert run("gopher_repetition", p, lines)[0] == "dup_line_frac"
    paras = "\n\n".join([PROSE[:200]] * 2 + [PROSE[200:]])
    assert run("gopher_repetition", p, paras)[0] == "dup_para_frac"  # paragraphs first, as datatrove
    no_para_rules = GopherRepetitionParams(max_dup_para_frac=None, max_dup_para_char_frac=None)
    assert run("gopher_repetition", no_para_rules, paras)[0] == "dup_line_frac"  # one-line paragraphs are lines too
    words = norm_words(PROSE)
    looped = " ".join(words[:30] * 3)  # one long passage three times: duplicated 5..10-grams
    reason = run("gopher_repetition", p, looped)[0]
    assert reason is not None and reason.startswith(("dup_", "top_"))
    assert run("gopher_repetition", p, " ".join(["the cat"] * 40) + " " + PROSE)[0] == "top_2gram_char_frac"


# ---------------------------------------------------------------- C4 and FineWeb


def test_c4_line_and_page_rules():
    p = C4Params()
    page = "\n".join([
        "Welcome to the site of the town library and its many friends.",
        "Home",  # too few words, and no terminal punctuation
        "Please enable JavaScript to view the comments powered by a service.",  # javascript
        "This site uses cookies to give you the best experience possible.",  # policy
        "Our reading room opens at nine in the morning on weekdays.",
        "Children can join the story hour every Saturday at ten o'clock!",
        "Is there a quiet place to study? Yes, on the second floor.",
        "Books can be returned at any branch of the city library.",
    ])
    reason, doc, st = run("c4", p, page)
    assert reason is None
    assert "Home" not in doc.text and "JavaScript" not in doc.text and "cookies" not in doc.text
    assert st.counters == {"lines_dropped:no_terminal_punct": 1, "lines_dropped:javascript": 1, "lines_dropped:policy": 1}
    assert run("c4", p, page + "\nThe set {a, b} has two members.")[0] == "curly_bracket"
    # as in C4's code, a "{" on a line dropped anyway leaves the page
    assert run("c4", p, page + "\nvar x = {a: 1};")[0] is None
    assert run("c4", p, "Lorem ipsum dolor sit amet.\n" + page)[0] == "lorem_ipsum"
    assert run("c4", p, "One sentence only here.\nAnd a second one.")[0] == "too_few_sentences"
    # C4's thresholds: 3 sentences make a page, a line needs 5 words; datatrove's defaults swap them
    three = "The library opens at nine every morning. It closes at six in the evening. Members may borrow ten books."
    assert run("c4", p, three)[0] is None
    assert run("c4", C4Params(min_sentences=5, min_words_per_line=3), three)[0] == "too_few_sentences"
    reason, doc, _ = run("c4", p, three + "\nOpen on Sundays too.")
    assert reason is None and "Sundays" not in doc.text
    # FineWeb's setting: lines without terminal punctuation stay
    reason, doc, _ = run("c4", C4Params(filter_no_terminal_punct=False), page.replace("weekdays.", "weekdays"))
    assert reason is None and "on weekdays\n" in doc.text


def test_fineweb_rules():
    p = FineWebParams()
    assert run("fineweb", p, PROSE)[0] is None
    no_punct = "\n".join(f"a line of words number {i} without any end mark at all here" for i in range(10))
    assert run("fineweb", p, no_punct)[0] == "line_punct_ratio"
    short = "\n".join(["Short line.", "Tiny.", "Also short.", "A much longer line of text that ends properly here."])
    assert run("fineweb", p, short)[0] == "short_line_ratio"
    dup = "\n".join([PROSE[:120] + "."] * 2 + [PROSE])
    assert run("fineweb", p, dup)[0] == "dup_line_char_ratio"
    listy = "\n".join(f"Item {i}." for i in range(10)) + "\nThe end."
    assert run("fineweb", FineWebParams(max_short_line_ratio=None), listy)[0] == "newline_word_ratio"


def test_length_on_metadata_field():
    p = LengthParams(field="title", min_words=None, max_words=None, min_chars=3, max_chars=10)
    assert run("length", p, "body", title="Fine")[0] is None
    assert run("length", p, "body", title="Far too long title")[0] == "too_long_chars"
    assert run("length", p, "body")[0] == "missing_title"


# ---------------------------------------------------------------- language id


def test_langid_labels_and_filters():
    p = LangIdParams()
    reason, doc, _ = run("langid", p, PROSE)
    assert reason is None and doc.meta["lang"] == "en" and doc.meta["lang_score"] > 0.9
    german = "Die Stadt hat beschlossen, im nächsten Jahr mehr Radwege zu bauen und den Busverkehr auszuweiten."
    reason, doc, _ = run("langid", p, german)
    assert reason == "language" and doc.meta["lang"] == "de"
    assert run("langid", LangIdParams(keep=["de", "en"]), german)[0] is None


# ---------------------------------------------------------------- PII


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and iban_ok("GB82 WEST 1234 5698 7654 32")
    assert not iban_ok("DE89370400440532013001")


@pytest.mark.parametrize("value,kind", [
    ("jane.doe+work@mail.example.co.uk", "EMAIL"),
    ("+1 415 555 2671", "PHONE"), ("(415) 555-2671", "PHONE"), ("415-555-2671", "PHONE"),
    ("+44 20 7946 0958", "PHONE"), ("06 12 34 56 78", "PHONE"), ("+49 30 12345678", "PHONE"),
    ("192.168.10.254", "IP"), ("2001:db8:85a3::8a2e:370:7334", "IP"), ("fe80::1ff:fe23:4567:890a", "IP"),
    ("4111 1111 1111 1111", "CREDIT_CARD"), ("5500-0000-0000-0004", "CREDIT_CARD"), ("378282246310005", "CREDIT_CARD"), ("3782 822463 10005", "CREDIT_CARD"),
    ("DE89 3704 0044 0532 0130 00", "IBAN"), ("GB82WEST12345698765432", "IBAN"),
])
def test_pii_each_kind(value, kind):
    reason, doc, st = run("pii", PiiParams(), f"Contact details: {value}. Thanks.")
    assert reason is None
    assert value not in doc.text and f"<{kind}>" in doc.text, doc.text
    assert st.counters[kind] == 1


def test_pii_leaves_lookalikes_alone():
    text = ("The meeting is on 2023-05-12 at 12:30:45 in room 101. The invoice 4111111111111112 is not a card, 14000-3920-1000=9080 is sums, "
            "DE89370400440532013001 is not an IBAN, and the population grew from 1,200 to 3,450. Version 3.2 "
            "shipped; call std::vector or a::b in C++. She scored 12 of 15. Signal: 1010 1101 1001 0001 1010 1111 1100 1001.")
    reason, doc, st = run("pii", PiiParams(), text)
    assert doc.text == text and not st.counters


def test_pii_on_metadata_fields():
    reason, doc, st = run("pii", PiiParams(fields=["text", "response"]), "Ask me.", response="Mail me at a.b@example.org.")
    assert doc.meta["response"] == "Mail me at <EMAIL>." and st.counters == {"EMAIL": 1, "docs_with_pii": 1}


def test_pii_kinds_can_be_switched_off():
    _, doc, _ = run("pii", PiiParams(emails=False), "Mail a@example.com or call 415-555-2671.")
    assert "a@example.com" in doc.text and "<PHONE>" in doc.text


# ---------------------------------------------------------------- toxicity


def test_toxicity_word_list_and_classifier(tmp_path, monkeypatch):
    p = ToxicityParams()
    assert run("toxicity", p, PROSE)[0] is None
    assert run("toxicity", p, PROSE + " What the FUCK is this.")[0] == "word_list"
    assert run("toxicity", p, "The classic novel Shitty Things? no: 'shittyness' is not a listed word.")[0] == "word_list"
    words = tmp_path / "words.txt"
    words.write_text("# mine\nbadword\n")
    assert run("toxicity", ToxicityParams(words_file=str(words)), "a badword here")[0] == "word_list"
    mod = types.ModuleType("fake_tox")
    mod.score = lambda text: 0.9 if "angry" in text else 0.1
    monkeypatch.setitem(sys.modules, "fake_tox", mod)
    with_clf = ToxicityParams(classifier="fake_tox:score")
    assert run("toxicity", with_clf, "an angry rant")[0] == "classifier"
    reason, doc, _ = run("toxicity", with_clf, PROSE)
    assert reason is None and doc.meta["toxicity_score"] == 0.1
    # an unavailable classifier is skipped, and the report says so
    reason, _, st = run("toxicity", ToxicityParams(classifier="no_such_module_xyz:score"), PROSE)
    assert reason is None and st.counters == {"classifier_unavailable": 1}


# ---------------------------------------------------------------- SFT format


def test_sft_format_both_schemas():
    p = SftFormatParams(reject_phrases=["as an ai language model"])
    ok = Document("1", "What is 2+2?", {"response": "4"}, "prompt")
    alp = Document("2", "Summarize the text.", {"input": "Long text.", "output": "Short."}, "instruction")
    stage = build_stage("sft_format", p)
    assert stage.process(ok, StageStats()) is None and stage.process(alp, StageStats()) is None
    cases = {
        "missing_response": Document("3", "Hi?", {}, "prompt"),
        "response_too_short": Document("4", "Hi there?", {"response": "  "}, "prompt"),
        "not_a_string": Document("5", "Hi there?", {"output": 5}, "instruction"),
        "echo": Document("6", "Repeat me", {"response": "Repeat me"}, "prompt"),
        "rejected_phrase": Document("7", "Tell a joke", {"response": "As an AI language model, I cannot."}, "prompt"),
        "prompt_too_short": Document("8", "?", {"response": "What?"}, "prompt"),
    }
    for reason, doc in cases.items():
        assert stage.process(doc, StageStats()) == reason
