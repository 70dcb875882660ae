"""The curation tests' helpers (labelled_corpus, curate_outputs) live beside them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
