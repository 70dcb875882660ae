"""PII redaction: emails, phone numbers, IPv4/IPv6, credit cards (Luhn), IBANs (mod 97).

Matches become typed placeholders; numbers are only replaced when their checksum holds, so
ordinary long numbers in prose survive.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter
from data_pipelines.curate.stats import StageStats

EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])"
)
# printed IBAN: country, check digits, then groups of 4 (spaces optional) and a short last group
IBAN_RE = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w])")
# cards as printed: unbroken, in groups of four, or Amex 4-6-5; other digit groupings are arithmetic
CARD_RE = re.compile(
    r"(?<![\w-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{3})?|\d{4}([ -])\d{6}\2\d{5})(?![\w]|-\d)"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
PHONE_RE = re.compile(
    r"(?<![\w+.-])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +44 20 7946 0958, +1-555-123-4567
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"  # (555) 123-4567
    r"|\d{3}[ .-]\d{3}[ .-]\d{4}"  # 555-123-4567, 555.123.4567
    r"|0\d(?:[ .]\d{2}){4}"  # 06 12 34 56 78
    r"|0\d{2,4}[ /-]\d{3,4}[ -]?\d{3,4}"  # 020 7946 0958, 030/1234567
    r")(?![\w]|[.-]\d)"
)
DATE_RE = re.compile(r"^\d{4}[ .-]\d{2}[ .-]\d{2}$|^\d{2}[ .-]\d{2}[ .-]\d{4}$")


def luhn_ok(digits: str) -> bool:
    """Returns True when the digit string passes the Luhn checksum (ISO/IEC 7812)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """Returns True for a 15..34 character IBAN whose mod-97 check (ISO 13616) gives 1."""
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


@dataclass
class PiiParams:
    """Which kinds to redact and their placeholders (typed, so models learn the slot, not the value)."""

    fields: list[str] = field(default_factory=lambda: ["text"])  # "text" or metadata string fields
    emails: bool = True
    phones: bool = True
    ips: bool = True
    credit_cards: bool = True
    ibans: bool = True
    email_token: str = "<EMAIL>"
    phone_token: str = "<PHONE>"
    ip_token: str = "<IP>"
    credit_card_token: str = "<CREDIT_CARD>"
    iban_token: str = "<IBAN>"


class Pii(Filter):
    """Replaces PII with typed placeholders and counts each kind; never removes a document."""

    name = "pii"
    Params = PiiParams

    def process(self, doc: Document, stats: StageStats) -> str | None:
        counts: dict[str, int] = {}
        for name in self.p.fields:
            value = doc.string(name)
            if not value:
                continue
            redacted = self.redact(value, counts)
            if redacted != value:
                if name in ("text", doc.text_key):
                    doc.text = redacted
                else:
                    doc.meta[name] = redacted
        if counts:
            for k, v in counts.items():
                stats.count(k, v)
            stats.count("docs_with_pii")
        return None

    def redact(self, text: str, counts: dict[str, int]) -> str:
        """Returns `text` with PII replaced by placeholders, adding to `counts` per kind."""
        p = self.p
        # order matters: IBANs and cards contain digit runs that the phone pattern would also take
        if p.ibans and _maybe_iban(text):
            text = IBAN_RE.sub(lambda m: self._iban(m.group(0), counts), text)
        if p.credit_cards:
            text = CARD_RE.sub(lambda m: self._card(m.group(0), counts), text)
        if p.emails and "@" in text:
            text = EMAIL_RE.sub(lambda m: _tally(counts, "EMAIL", p.email_token), text)
        if p.ips:
            if "::" in text or text.count(":") >= 2:
                text = IPV6_RE.sub(lambda m: self._ipv6(m.group(0), counts), text)
            text = IPV4_RE.sub(lambda m: _tally(counts, "IP", p.ip_token), text)
        if p.phones:
            text = PHONE_RE.sub(lambda m: self._phone(m.group(0), counts), text)
        return text

    def _iban(self, s: str, counts: dict) -> str:
        # the last group may have swallowed a following code word: retry without it
        cut = s
        while len(cut.replace(" ", "")) >= 15:
            if iban_ok(cut):
                return _tally(counts, "IBAN", self.p.iban_token) + s[len(cut):]
            if " " not in cut:
                break
            cut = cut.rsplit(" ", 1)[0]
        return s

    def _card(self, s: str, counts: dict) -> str:
        digits = s.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            return _tally(counts, "CREDIT_CARD", self.p.credit_card_token)
        return s

    def _ipv6(self, s: str, counts: dict) -> str:
        # "a::b" (C++ scopes) parses as IPv6; real addresses carry more hex digits than that
        if sum(c.isalnum() for c in s) < 5:
            return s
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            return s  # times such as 12:30:45 and other colon lists
        return _tally(counts, "IP", self.p.ip_token)

    def _phone(self, s: str, counts: dict) -> str:
        digits = [c for c in s if c.isdigit()]
        # E.164 numbers have at most 15 digits; fewer than 7 is a quantity, not a phone;
        # groups of only 0s and 1s are binary strings
        if not 7 <= len(digits) <= 15 or DATE_RE.match(s) or set(digits) <= {"0", "1"}:
            return s
        return _tally(counts, "PHONE", self.p.phone_token)


def _tally(counts: dict, kind: str, token: str) -> str:
    counts[kind] = counts.get(kind, 0) + 1
    return token


def _maybe_iban(text: str) -> bool:
    # cheap pre-check: IBAN_RE is only worth running when two capitals precede two digits somewhere
    return re.search(r"[A-Z]{2}\d{2}", text) is not None
