"""The range a numeric config field must lie in, stated beside the field and checked by the loader."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Range:
    """An interval of numbers; a bound of None is unbounded, `*_open` excludes the bound itself."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: float) -> bool:
        if value != value:  # NaN compares false with every bound
            return self.lo is None and self.hi is None
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or not (value > self.hi or (self.hi_open and value == self.hi))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def ranged(default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None) -> Any:
    """Returns a dataclass field with `default` whose value must satisfy the given bounds."""
    lo, hi = (gt if gt is not None else ge), (lt if lt is not None else le)
    return field(default=default, metadata={"range": Range(lo, hi, gt is not None, lt is not None)})


def field_range(cls: type, name: str) -> Range | None:
    """Returns the Range stated on field `name` of dataclass `cls`, or None when it has none."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("range")
    raise KeyError(f"{cls.__name__} has no field {name}")


def out_of_range(key: str, value: Any, rng: Range | None) -> str | None:
    """Returns "key must be <range>, got <value>" when a number lies outside `rng`, else None."""
    if rng is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value in rng:
        return None
    return f"{key} must be {rng}, got {value}"
