"""Command-line flags that mean a config field: parsed as the field's type, refused outside its range."""

from __future__ import annotations

import argparse
import typing
from typing import Any, Callable

from maxlm.config.ranges import field_range


def flag_type(cls: type, name: str) -> Callable[[str], Any]:
    """Returns an argparse `type=` for a flag with the meaning of field `name` of dataclass `cls`."""
    t = typing.get_type_hints(cls)[name]
    rng = field_range(cls, name)

    def parse(text: str) -> Any:
        try:
            value = t(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if t is int else 'a number'}, got {text!r}") from None
        if rng is not None and value not in rng:
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return value

    parse.__name__ = f"{cls.__name__}.{name}"
    return parse
