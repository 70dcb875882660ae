"""One Document record (id, text, metadata) carried through every stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """A record under curation; `meta` holds every input field except the id and the text."""

    id: Any  # the input's own id value (kept as-is), or "file:line" when the input has none
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    text_key: str = "text"  # the input field the text came from; it is written back there
    where: str = ""  # "file:line" of the source record, for reports
    # With a messages list under text_key (kept whole in meta): the index of the message whose
    # content is the text. None: the text is the string value of text_key.
    turn: int | None = None

    def to_record(self) -> dict[str, Any]:
        """Returns the output record: id, the text under its own key (or in its message), then the metadata."""
        if self.turn is None:
            rec = {"id": self.id, self.text_key: self.text}
            rec.update(self.meta)
            return rec
        rec = {"id": self.id, **self.meta}
        messages = list(rec[self.text_key])
        messages[self.turn] = {**messages[self.turn], "content": self.text}
        rec[self.text_key] = messages
        return rec

    def string(self, name: str) -> str | None:
        """Returns the string value of `name` ("text" means the document text), or None."""
        if name == "text" or name == self.text_key:
            return self.text
        value = self.meta.get(name)
        return value if isinstance(value, str) else None


def utf8_size(text: str) -> int:
    """Returns the UTF-8 byte length of `text` without encoding ASCII text."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
