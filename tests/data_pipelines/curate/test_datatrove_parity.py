"""The rule filters decide as datatrove's implementations of the same filters at the same thresholds.

Each stage and its datatrove counterpart (its `filter(doc)` on a datatrove Document) see every
document of parity_corpus: real text of many shapes. Agreement must reach 0.995 per filter,
with every disagreement printed. DELIBERATE lists the documents where maxlm differs on purpose
(each reason is quoted in the stage's docstring); on this corpus there are none.
"""

from __future__ import annotations

import pytest

datatrove_filters = pytest.importorskip("datatrove.pipeline.filters")
pytest.importorskip("spacy")  # datatrove's English word tokenizer

from datatrove.data import Document as DatatroveDocument  # noqa: E402
from datatrove.utils.text import split_into_sentences, split_into_words  # noqa: E402

import parity_corpus  # noqa: E402
from labelled_corpus import shared_data_dir  # noqa: E402
from data_pipelines.curate import en_words  # noqa: E402
from data_pipelines.curate.document import Document  # noqa: E402
from data_pipelines.curate.stages import STAGES  # noqa: E402
from data_pipelines.curate.stats import StageStats  # noqa: E402

MIN_AGREEMENT = 0.995
# (stage, maxlm params, datatrove filter class, its arguments): the defaults, and the
# variants configs/curation/english_web.yaml runs
CASES = [
    ("gopher_repetition", {}, "GopherRepetitionFilter", {}),
    ("gopher_quality", {}, "GopherQualityFilter", {}),
    ("fineweb", {}, "FineWebQualityFilter", {}),
    # C4's thresholds (maxlm's defaults) and datatrove's (its defaults, which swap them: stages/c4.py)
    ("c4", {}, "C4QualityFilter", {"min_num_sentences": 3, "min_words_per_line": 5}),
    ("c4", {"filter_no_terminal_punct": False, "min_sentences": 5, "min_words_per_line": 3}, "C4QualityFilter",
     {"filter_no_terminal_punct": False}),
]
# stage -> the corpus shapes of documents decided differently on purpose, and how many
DELIBERATE: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    data = shared_data_dir()
    if data is None:
        pytest.skip("shared data not found (../shared/data or MAXLM_SHARED_DATA)")
    docs = parity_corpus.build(data)
    assert len(docs) >= 3000 and len({shape for shape, _ in docs}) >= 15
    return docs


def _datatrove_keeps(flt, text: str, i: int) -> tuple[bool, str]:
    verdict = flt.filter(DatatroveDocument(text=text, id=str(i)))
    if isinstance(verdict, tuple):
        return verdict[0], verdict[1]
    return bool(verdict), "" if verdict else "removed"


@pytest.mark.slow  # about 60 s on 2 cores: datatrove's filters are pure Python
@pytest.mark.parametrize("name,params,dt_class,dt_args", CASES, ids=[f"{c[0]}{c[1] or ''}" for c in CASES])
def test_decisions_equal_datatrove(corpus, name, params, dt_class, dt_args):
    stage = STAGES[name](STAGES[name].Params(**params))
    stage.setup()
    reference = getattr(datatrove_filters, dt_class)(**dt_args)
    differ = []
    for i, (shape, text) in enumerate(corpus):
        dt_keep, dt_why = _datatrove_keeps(reference, text, i)
        why = stage.process(Document(id=i, text=text), StageStats(name))
        if dt_keep != (why is None):
            differ.append((i, shape, dt_why or "kept", why or "kept", text[:160]))
    counted: dict[str, int] = {}
    for _, shape, *_ in differ:
        counted[shape] = counted.get(shape, 0) + 1
    report = "\n".join(f"doc {i} [{shape}] datatrove: {a}, maxlm: {b}: {t!r}" for i, shape, a, b, t in differ[:40])
    agreement = 1 - len(differ) / len(corpus)
    assert agreement >= MIN_AGREEMENT, f"{name}: agreement {agreement:.4f} on {len(corpus)} documents\n{report}"
    assert counted == DELIBERATE.get(name, {}), f"{name}: disagreements by shape {counted}, expected " \
        f"{DELIBERATE.get(name, {})}\n{report}"


def test_words_equal_datatrove_words(corpus):
    """en_words.words gives datatrove's English tokens, the unit of every word rule."""
    differ = [(shape, text[:120]) for shape, text in corpus if en_words.words(text) != split_into_words(text)]
    assert len(differ) / len(corpus) <= 0.005, f"{len(differ)} documents tokenised differently: {differ[:10]}"


def test_sentences_equal_datatrove_sentences(corpus):
    """en_words.count_sentences counts what datatrove's split_into_sentences splits, line by line (C4's unit)."""
    lines = [ln.strip() for _, text in corpus[::4] for ln in text.splitlines() if ln.strip()]
    differ = [ln for ln in lines if en_words.count_sentences(ln) != len(split_into_sentences(ln))]
    assert len(differ) / len(lines) <= 0.001, f"{len(differ)} of {len(lines)} lines: {differ[:10]}"


def test_words_split_as_spacy_english():
    """Fixed cases of the rules: clitics, abbreviations, code, URLs, units, emoticons."""
    cases = {
        "I can't, don't. U.S. e.g. Mr. Smith": ["I", "ca", "n't", ",", "do", "n't", ".", "U.S.", "e.g.", "Mr.", "Smith"],
        "f(a, b): x[1:] see http://x.org/a?b=1.": ["f(a", ",", "b", "):", "x[1", ":]", "see", "http://x.org/a?b=1", "."],
        "5km 10% $5 3.5 a-b 2/a 5pm": ["5", "km", "10", "%", "$", "5", "3.5", "a", "-", "b", "2", "/", "a", "5", "pm"],
        "id dont it's": ["i", "d", "do", "nt", "it", "'s"],
    }
    for text, want in cases.items():
        assert en_words.words(text) == want, text
        assert split_into_words(text) == want, text  # the reference agrees with the fixed case
