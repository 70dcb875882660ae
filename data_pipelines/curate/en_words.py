"""English words and sentences counted the way datatrove counts them for its rule filters.

datatrove (0.10) splits English text for the Gopher, FineWeb and C4 filters with spaCy's
blank English pipeline: the rule tokenizer (whitespace, then prefix / suffix / infix
punctuation and a table of special cases) and the sentencizer. A "word" there is any token:
"don't" is "do" + "n't", "f(a, b)." is "f(a" "," "b" ")" ".", and a comma is a word. The
rules below are written for this project from spaCy's documented behaviour, so the filters
need no spaCy; tests/data_pipelines/curate/test_datatrove_parity.py holds them to datatrove.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache

_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_PUNCT = ["…", ",", ":", ";", "!", "?", "¿", "؟", "¡", "(", ")", "[", "]", "{", "}", "<", ">", "_", "#", "*", "&",
          "。", "？", "！", "，", "、", "；", "：", "～", "·", "।", "،", "۔", "؛", "٪"]
_HYPHENS = ["---", "--", "——", "-", "–", "—", "~"]
_UNITS = ("km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz "
          "m/s km/h kmh mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K %").split()
_CURRENCY = ["US$", "C$", "A$", "$", "£", "€", "¥", "฿", "₽", "₹", "₩", "₪", "₫", "₦", "₱", "₴", "₺", "₿"]
# the characters that end a sentence for spaCy's sentencizer (the Latin and CJK ones)
SENTENCE_END_CHARS = frozenset("!.?‼‽⁇⁈⁉！．？｡。﹒﹖﹗")

# abbreviations kept whole with their period (spaCy's English special cases)
_ABBREVIATIONS = (
    "Adm. Ak. Ala. Apr. Ariz. Ark. Aug. Bros. Calif. Co. Colo. Conn. Corp. D.C. Dec. Del. Dr. E.G. E.g. Feb. Fla. "
    "Ga. Gen. Gov. I.E. I.e. Ia. Id. Ill. Inc. Ind. Jan. Jr. Jul. Jun. Kan. Kans. Ky. La. Ltd. Mar. Mass. Md. "
    "Messrs. Mich. Minn. Miss. Mo. Mont. Mr. Mrs. Ms. Mt. N.C. N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Nov. "
    "Oct. Okla. Ore. Pa. Ph.D. Prof. Rep. Rev. S.C. Sen. Sep. Sept. St. Tenn. Va. Wash. Wis. a.m. co. e.g. i.e. "
    "p.m. v.s. vs. ä. ö. ü."
).split() + [f"{c}." for c in "abcdefghijklmnopqrstuvwxyz"]
# punctuation-only special cases; spaCy joins any special case back when its affix rules cut it
# apart ("f():" -> "f" "(" "):", "x[1:]" -> "x[1" ":]", "m/s." -> "m" "/" "s.")
_EMOTICONS = frozenset((
    "): )-: (: (-: (; (-; (= (-8 :( :(( :((( :() :) :)) :))) :* :-( :-(( :-((( :-) :-)) :-))) :-* :-/ :-0 :-3 "
    ":-> :-] :-| :-} :/ :0 :1 :3 :> :] :| :} ;) ;-) ;_; <.< </3 <3 <33 <333 =( =) =/ =3 =[ =] =| >.< >.> >:( "
    "@_@ [-: [: [= ]= ^_^ ^__^ ^___^ -_- -__- ._. 0.0 0_0 8) 8-) '' ’’ :'( :') :'-( :'-) (._.) (*_*) (-_-) "
    "(>_<) (^_^) (¬_¬) :P :p :D :-P :-p :-D xD XD").split())
# clitics and quote pairs that are whole tokens on their own
_CLITICS = "'s 'S ’s ’S 'd 'D ’d 'll 'LL ’ll 'm 'M ’m 're 'RE ’re 've 'VE ’ve 'em ’em 'cause ’cause 'bout n't n’t".split()

# auxiliaries that take n't, in the form they keep before it ("can't" -> "ca" + "n't")
_NEGATABLE = ("ai", "are", "ca", "could", "dare", "did", "does", "do", "had", "has", "have", "is", "may", "might",
              "must", "need", "ought", "sha", "should", "was", "were", "wo", "would")
# words that take 'd 'll 're 's 've 'm (spaCy also splits them written without the apostrophe)
_CLITIC_BASES = {
    "i": ("d", "ll", "m", "ve"), "you": ("d", "ll", "re", "ve"), "he": ("d", "ll", "s"), "she": ("d", "ll", "s"),
    "it": ("d", "ll", "s"), "we": ("d", "ll", "re", "ve"), "they": ("d", "ll", "re", "ve"),
    "that": ("d", "ll", "s"), "there": ("d", "ll", "re", "s", "ve"), "who": ("d", "ll", "re", "s", "ve"),
    "what": ("d", "ll", "re", "s", "ve"), "where": ("d", "ll", "re", "s", "ve"), "when": ("d", "ll", "re", "s", "ve"),
    "why": ("d", "ll", "re", "s", "ve"), "how": ("d", "ll", "re", "s", "ve"), "these": ("d", "ll", "re", "ve"),
    "those": ("d", "ll", "re", "ve"), "this": ("d", "ll", "s"), "could": ("ve",), "should": ("ve",),
    "would": ("ve",), "might": ("ve",), "must": ("ve",), "let": ("s",),
}
# the apostrophe-less forms that are English words of their own stay whole
_PLAIN_WORDS = {"ill", "well", "were", "shed", "shell", "hell", "its", "lets", "whore"}


def _special_cases() -> dict[str, tuple[str, ...]]:
    """Returns the whole-token table: text -> the tokens spaCy's English rules give it."""
    table: dict[str, tuple[str, ...]] = {a: (a,) for a in [*_ABBREVIATIONS, *_EMOTICONS, *_CLITICS, "and/or"]}
    def add(parts: tuple[str, ...]):
        for case in (str, str.capitalize):  # "don't" and "Don't"; spaCy leaves "DON'T" whole
            first = (case(parts[0]),) + parts[1:]
            table["".join(first)] = first
    for kept in _NEGATABLE:
        for apo in ("'", "’"):
            add((kept, f"n{apo}t"))
        if kept + "nt" not in _PLAIN_WORDS:
            add((kept, "nt"))
    for clitic_word, clitics in _CLITIC_BASES.items():
        for c in clitics:
            for apo in ("'", "’"):
                add((clitic_word, apo + c))
            if clitic_word + c not in _PLAIN_WORDS:
                add((clitic_word, c))
    for w, parts in {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                     "wanna": ("wan", "na"), "y'all": ("y'", "all"), "yall": ("y", "all")}.items():
        add(parts)
    for hour in range(1, 13):
        for half in ("am", "pm", "a.m.", "p.m."):
            table[f"{hour}{half}"] = (str(hour), half)
    return table


SPECIAL = _special_cases()


@cache
def _classes() -> tuple[str, str, str, str]:
    """Returns regex class bodies (letters, lowercase+uncased, uppercase+uncased, symbols)."""
    lower, upper = [], []
    for c in map(chr, list(range(0x41, 0x250)) + list(range(0x370, 0x530)) + list(range(0x1E00, 0x2000))):
        if c.isalpha():
            (lower if c.islower() else upper if c.isupper() else lower).append(c)
    uncased = "\u0590-\u08ff\u0900-\u0dff\u1100-\u11ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
    lo = re.escape("".join(lower)) + uncased
    up = re.escape("".join(upper)) + uncased
    symbols = "".join(c for c in map(chr, list(range(0xA0, 0x3000)) + list(range(0x1F000, 0x1FB00)))
                      if unicodedata.category(c) == "So")
    return lo + re.escape("".join(upper)), lo, up, re.escape(symbols)


@cache
def _regexes() -> tuple[re.Pattern, re.Pattern, re.Pattern, re.Pattern]:
    """Returns the compiled (prefix, suffix, infix, url) patterns."""
    alpha, lower, upper, icons = _classes()
    quotes = re.escape(_QUOTES)
    esc = lambda xs: [re.escape(x) for x in xs]
    icon = f"[{icons}]"
    prefixes = esc(["§", "%", "=", "—", "–"]) + [r"\+(?![0-9])"] + esc(_PUNCT) + [r"\.\.+", "…"]
    prefixes += [f"[{quotes}]"] + esc(_CURRENCY) + [icon]
    punct = re.escape("".join(_PUNCT)) + r"|\\()?:"
    suffixes = esc(_PUNCT) + [r"\.\.+", "…", f"[{quotes}]", icon] + esc(["'s", "'S", "’s", "’S", "—", "–"])
    suffixes += [r"(?<=[0-9])\+", r"(?<=°[FfCcKk])\.", "(?<=[0-9])(?:" + "|".join(esc(_CURRENCY)) + ")",
                 "(?<=[0-9])(?:" + "|".join(esc(_UNITS)) + ")",
                 rf"(?<=[0-9{lower}%²\-\+{punct}{quotes}])\.", rf"(?<=[{upper}][{upper}])\."]
    infixes = [r"\.\.+", "…", icon, r"(?<=[0-9])[+\-\*^](?=[0-9-])", rf"(?<=[{lower}{quotes}])\.(?=[{upper}{quotes}])",
               rf"(?<=[{alpha}]),(?=[{alpha}])", rf"(?<=[{alpha}0-9])(?:{'|'.join(esc(_HYPHENS))})(?=[{alpha}])",
               rf"(?<=[{alpha}0-9])[:<>=/](?=[{alpha}])"]
    url = (r"(?:[\w+\-.]{2,}://)?(?:\S+(?::\S*)?@)?(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?"
           rf"[A-Za-z0-9\u00a1-\uffff]\.)+[{lower}]{{2,63}}(?::\d{{2,5}})?(?:[/?#]\S*)?")
    return (re.compile("^(?:" + "|".join(prefixes) + ")"), re.compile("(?:" + "|".join(p + "$" for p in suffixes) + ")"),
            re.compile("|".join(infixes)), re.compile(url))


def _split_affixes(s: str, out: list[str]) -> None:
    """Appends the tokens of one whitespace-free chunk `s` to `out`."""
    prefix_re, suffix_re, infix_re, url_re = _regexes()
    prefixes, suffixes = [], []
    while s and s not in SPECIAL:
        size = len(s)
        m = prefix_re.search(s)
        pre = m.end() if m else 0
        if pre and s[pre:] in SPECIAL:
            prefixes.append(s[:pre])
            s = s[pre:]
            break
        m = suffix_re.search(s[pre:])  # on the rest alone: a suffix's look-behind ends at the prefix
        suf = len(s) - pre - m.start() if m else 0
        if suf and s[:-suf] in SPECIAL:
            suffixes.append(s[-suf:])
            s = s[:-suf]
            break
        if pre and suf and pre + suf <= len(s):
            prefixes.append(s[:pre])
            suffixes.append(s[-suf:])
            s = s[pre:-suf]
        elif pre:
            prefixes.append(s[:pre])
            s = s[pre:]
        elif suf:
            suffixes.append(s[-suf:])
            s = s[:-suf]
        if len(s) == size:
            break
    out.extend(prefixes)
    if s in SPECIAL:
        out.extend(SPECIAL[s])
    elif s and url_re.fullmatch(s):
        out.append(s)
    elif s:
        start = 0
        for m in infix_re.finditer(s):
            if m.start() == 0:  # an infix at the very start stays on the token
                continue
            if m.start() != start:
                out.append(s[start:m.start()])
            if m.end() != m.start():
                out.append(m.group())
            start = m.end()
        if start < len(s):
            out.append(s[start:])
    out.extend(reversed(suffixes))


def _join_specials(toks: list[str]) -> list[str]:
    """Returns one chunk's tokens with each run that spells a special case replaced by its tokens (longest first)."""
    out, i = [], 0
    while i < len(toks):
        for j in range(min(len(toks), i + 4), i + 1, -1):
            joined = "".join(toks[i:j])
            if joined in SPECIAL:
                out.extend(SPECIAL[joined])
                i = j
                break
        else:
            out.append(toks[i])
            i += 1
    return out


@lru_cache(maxsize=1 << 16)
def _chunk_words(chunk: str) -> tuple[str, ...]:
    """Returns the tokens of one whitespace-free chunk (cached: chunks repeat across a corpus)."""
    toks: list[str] = []
    _split_affixes(chunk, toks)
    return tuple(_join_specials(toks) if len(toks) > 1 else toks)


def words(text: str) -> list[str]:
    """Returns the word tokens of `text` as datatrove's English split_into_words gives them."""
    out: list[str] = []
    for chunk in text.split():
        if (chunk.isalpha() or chunk.isdecimal()) and chunk not in SPECIAL:
            out.append(chunk)  # the common case: no punctuation, nothing to split
        else:
            out.extend(_chunk_words(chunk))
    return out


def _is_punct(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


def count_sentences(text: str) -> int:
    """Returns the number of sentences in `text` by spaCy's sentencizer rule (0 for blank text).

    A sentence starts at the first token after a sentence-end token that is not punctuation; a
    run of whitespace other than one space is a token of its own there, and it starts one too.
    """
    n, seen_end, any_token = 0, False, False
    for i, piece in enumerate(re.split(r"(\s+)", text)):
        if i % 2:  # the whitespace between two chunks
            toks: tuple[str, ...] = () if piece == " " else (piece,)
        else:
            toks = tuple(words(piece))
        for t in toks:
            if not any_token:
                n, any_token = 1, True
            if t in SENTENCE_END_CHARS:
                seen_end = True
            elif seen_end and not _is_punct(t):
                n += 1
                seen_end = False
    return n
