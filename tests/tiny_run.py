"""The tiny pretraining config that run-level tests start from (configs/models/tiny.yaml on tinyshakespeare)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def write_tiny_config(root: Path, shared_data: Path, **sections) -> Path:
    """Returns the path of root/exp.yaml: 2 steps, its own 400-piece tokenizer, run_dir root/run; each keyword section updates that section."""
    cfg = {
        "base_config": str(REPO / "configs" / "models" / "tiny.yaml"),
        "run_dir": str(root / "run"),
        "tokenizer": {"path": str(root / "tok.model"), "vocab_size": 400},
        "data": {"train_files": [str(shared_data / "pretrain" / "tinyshakespeare.txt")], "seq_len": 32},
        "train": {"steps": 2, "global_batch_size": 8, "log_every": 1, "warmup_steps": 1},
        "mesh": {"data": -1},
    }
    for key, value in sections.items():
        cfg[key] = cfg.get(key, {}) | value if isinstance(value, dict) else value
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
