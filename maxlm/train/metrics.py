"""The one metrics writer (metrics.jsonl, TensorBoard, loss-curve PNG), the window of steps between
two logged ones, and throughput math."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from maxlm.config import ModelConfig, expert_dim, head_dim
from maxlm.errors import MaxlmError
from maxlm.files import atomic
from maxlm.files.writers import cut_torn_tail
from maxlm.train.trackers import TrackerRun, scalars

# Dense bf16 peak FLOP/s per device (a TPU v4 / v5p device is one megacore chip), from vendor
# datasheets; keys are lower-case device kinds or their prefixes, unknown devices report no MFU.
PEAK_FLOPS = {
    "h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12,
    "tpu v5": 459e12,  # a v5p chip reports its kind as plain "TPU v5"
}


def peak_flops(device_kind: str) -> float | None:
    """Returns the dense bf16 peak FLOP/s of a device of `device_kind` (e.g. "TPU v5"), or None when unknown."""
    kind = device_kind.lower()
    # The longest matching key: "tpu v5" must not claim a "TPU v5 lite".
    matches = [name for name in PEAK_FLOPS if name in kind]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def peak_flops_per_device() -> float | None:
    """Returns the accelerator's dense bf16 peak FLOP/s, or None when unknown (e.g. CPU)."""
    return peak_flops(jax.devices()[0].device_kind)


def param_count(cfg: ModelConfig, active: bool = False) -> int:
    """Returns the number of parameters of the decoder (embedding and heads included); with `active`, an MoE's
    counts only the experts_per_token experts a token runs through (and the router)."""
    d, f, h, n, k, v, layers = cfg.hidden_size, cfg.mlp_dim, head_dim(cfg), cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size, cfg.num_layers
    attn = d * h * (n + 2 * k) + n * h * d + (h * (n + 2 * k) if cfg.qkv_bias else 0)
    norms = 2 * d + (2 * h if cfg.qk_norm else 0) + (2 * d if cfg.post_norms else 0)
    if cfg.num_experts:
        mlp = (cfg.experts_per_token if active else cfg.num_experts) * 3 * d * expert_dim(cfg) + d * cfg.num_experts
    else:
        mlp = 3 * d * f
    return layers * (attn + mlp + norms) + v * d * (1 if cfg.tie_embeddings else 2) + d


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Returns training FLOPs per token: 6·N (active matmul params) + 12·L·N_heads·H·T (attention, PaLM's count)."""
    matmul_params = param_count(cfg, active=True) - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_embeddings else 1)
    return 6 * matmul_params + 12 * cfg.num_layers * cfg.num_heads * head_dim(cfg) * seq_len


# Step metrics that are not averaged into the logged record.
_NOT_LOGGED = ("tokens", "count", "nonfinite", "generate_seconds")


@dataclasses.dataclass
class Window:
    """The metrics of the steps since the last logged one, and the run's running totals.

    tokens_trained is None when the task does not count the tokens that carried a loss;
    `generates`: the batches are sampled by the run, so generation's share of the time is logged.
    """

    max_consecutive_nonfinite: int
    z_loss: bool
    generates: bool
    tokens_trained: float | None = None
    tokens: float = 0.0
    time: float = 0.0
    data: float = 0.0
    generate: float = 0.0
    means: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    consecutive_bad: int = 0
    skipped_updates: int = 0

    def add(self, step: int, m: dict[str, float], t_wall: float, t_data: float) -> None:
        """Adds one finished step's metrics; raises MaxlmError after too many non-finite steps in a row."""
        if m["nonfinite"]:
            self.consecutive_bad += 1
            self.skipped_updates += 1
            if self.consecutive_bad >= self.max_consecutive_nonfinite:
                raise MaxlmError(
                    f"step {step}: {self.consecutive_bad} non-finite losses or gradients in a row "
                    f"(train.max_consecutive_nonfinite={self.max_consecutive_nonfinite}); lower train.learning_rate"
                )
        else:
            self.consecutive_bad = 0
        generate = m.get("generate_seconds", 0.0)
        # m["tokens"] is already the global count: the step reduces over the whole mesh.
        self.tokens += m["tokens"]
        self.time += t_wall
        self.data += t_data - generate
        self.generate += generate
        if self.tokens_trained is not None:
            self.tokens_trained += m["count"]
        for k, v in m.items():
            if k not in _NOT_LOGGED and not (k == "z_loss" and not self.z_loss):
                self.means.setdefault(k, []).append(v)

    def record(self, step: int, learning_rate: float, flops_per_token: float, peak: float | None, skipped_records: int) -> dict:
        """Returns the logged record of the window ending at `step`, and starts the next window."""
        tps = self.tokens / max(self.time, 1e-9)
        means = {k: float(np.mean(v)) for k, v in self.means.items()}
        record = {
            "step": step,
            "loss": means.pop("loss"),
            "learning_rate": learning_rate,
            "grad_norm": means.pop("grad_norm"),
            **means,
            **({"tokens_trained": self.tokens_trained} if self.tokens_trained is not None else {}),
            "tokens_per_second": tps,
            "mfu": (tps * flops_per_token / (peak * jax.device_count())) if peak else None,
            "data_wait_fraction": self.data / max(self.time, 1e-9),
            "skipped_updates": self.skipped_updates,
            "skipped_records": skipped_records,
            **({"generation_fraction": self.generate / max(self.time, 1e-9)} if self.generates else {}),
        }
        self.tokens = self.time = self.data = self.generate = 0.0
        self.means = {}
        return record


class MetricsWriter:
    """Appends one JSON object per logged step and mirrors its scalars to TensorBoard and the experiment trackers."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, trackers: Sequence[TrackerRun] = ()):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.trackers = list(trackers)
        self.path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drops records past `step` (a resumed run rewrites what the killed run logged after its checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        cut_torn_tail(self.path)  # a kill or a full disk mid-append leaves half a line
        keep = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
        atomic.write_text(self.path, "".join(l + "\n" for l in keep))

    def last_value(self, key: str, default: float) -> float:
        """Returns `key` of the last record holding it (a resumed run continues its running totals)."""
        if not self.enabled or not self.path.exists():
            return default
        for line in reversed(self.path.read_text().splitlines()):
            if line.strip() and json.loads(line).get(key) is not None:
                return json.loads(line)[key]
        return default

    def write(self, record: dict) -> None:
        """Writes one record (must hold "step")."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(k, v, record["step"])
        for tracker in self.trackers:
            tracker.log(record["step"], scalars(clean))

    def sync(self) -> None:
        """Forces the records written so far onto the disk (called before a checkpoint commits, so none outlives its metrics)."""
        if not self.enabled or not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Flushes TensorBoard events and ends the tracker runs."""
        if self._tb is not None:
            self._tb.close()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def plot_loss(self) -> Path | None:
        """Writes run_dir/loss.png from metrics.jsonl and returns its path."""
        if not self.enabled or not self.path.exists():
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]
        train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
        evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
        fig, ax = plt.subplots(figsize=(6, 4))
        if train:
            ax.plot(*zip(*train), label="train loss")
        if evals:
            ax.plot(*zip(*evals), "o-", label="eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
        out = self.run_dir / "loss.png"
        fig.savefig(out, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return out
