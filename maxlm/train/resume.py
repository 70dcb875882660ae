"""May this config resume the run in its run dir? Checked before config.yaml is rewritten and before any compile."""

from __future__ import annotations

from maxlm.ckpt.manager import Checkpoints
from maxlm.config import Config, ModelConfig, head_dim
from maxlm.errors import MaxlmError

# The keys that decide the params' shapes: a checkpoint restores only into the model it was saved from.
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "qkv_bias", "qk_norm", "post_norms", "tie_embeddings")


def _shape_value(model: ModelConfig, key: str):
    """Returns `key` of `model` as the weights see it (head_dim 0 means hidden_size // num_heads)."""
    return head_dim(model) if key == "head_dim" else getattr(model, key)


def check_resumable(cfg: Config) -> None:
    """Raises MaxlmError when cfg.run_dir holds a checkpoint of a model shaped other than cfg.model."""
    ckpts = Checkpoints(cfg.run_dir, read_only=True)
    step = ckpts.latest_step()
    if step is None:
        return
    try:
        saved_cfg = ckpts.config(step)
    except MaxlmError:
        raise
    except Exception as e:  # a truncated or deleted config item
        raise ckpts.damaged(step, e, ckpts.config) from None
    saved, was, now = saved_cfg.model, saved_cfg.lora, cfg.lora
    if (was.rank, was.targets) != (now.rank, now.targets):
        raise MaxlmError(
            f"lora: the checkpoint {ckpts.directory / str(step)} was saved with lora.rank={was.rank} lora.targets={was.targets}, "
            f"the config now says lora.rank={now.rank} lora.targets={now.targets}; a run resumes only with the adapters it started with: use a new run_dir"
        )
    for key in SHAPE_KEYS:
        was, now = _shape_value(saved, key), _shape_value(cfg.model, key)
        if was != now:
            raise MaxlmError(
                f"model.{key}: the checkpoint {ckpts.directory / str(step)} was saved with {was!r}, the config now says {now!r}; "
                f"a run resumes only with the model it started with: set model.{key}={was!r}, or use a new run_dir"
            )
