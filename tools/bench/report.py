"""What every benchmark's JSON starts with and how it leaves: the machine, then stdout and --out."""

from __future__ import annotations

import json
import os
import platform

import jax

from maxlm.files import atomic


def machine() -> dict:
    """Returns the device kind and count, the host and the jax version, for a result's header."""
    return {
        "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "host": f"{platform.machine()} {os.cpu_count()} cores", "jax": jax.__version__,
    }


def emit(result: dict, out: str = "") -> None:
    """Prints the result as JSON and, given a path, writes it there whole (a temporary file, then a rename)."""
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="")
    if out:
        atomic.write_text(out, text)
