"""The one checkpoint manager: orbax steps under `run_dir/checkpoints/<step>/`.

Each step holds `params` (pure nested dict of arrays), optionally `opt_state` and
`data_state` (the data iterator's global position as JSON, one file whatever the process count, so a
run resumes with another number of processes), `config` (the resolved Config as JSON)
and, for a LoRA run, `base` (JSON: which frozen base its params, the adapters, go on; see ckpt/adapters.py).
Orbax writes into a temporary directory and renames on commit, so a step that was being
written when the process died is never listed, never restored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from maxlm import config as config_lib
from maxlm.errors import MaxlmError


def _layer_chunks(params: Any) -> Any:
    """Returns save args that store stacked layer leaves one layer per chunk."""
    # A per-layer reader (HF export) then decodes only that layer's bytes, never all L.
    return jax.tree_util.tree_map_with_path(
        lambda path, _: ocp.SaveArgs(shard_axes=(0,)) if getattr(path[0], "key", None) == "layers" else ocp.SaveArgs(), params
    )


def checkpoint_dir(path: str | Path) -> Path:
    """Returns the `checkpoints/` directory of a run dir, or `path` itself if it is one."""
    path = Path(path).resolve()
    return path if path.name == "checkpoints" else path / "checkpoints"


class Checkpoints:
    """Save / restore training state at steps of one run."""

    def __init__(self, path: str | Path, *, keep: int = 3, async_save: bool = True, read_only: bool = False, process_local: bool = False):
        """process_local (with read_only): this process reads alone, with no barrier that the other
        processes of a multi-process run would have to join (the HF export on process 0)."""
        self.directory = checkpoint_dir(path)
        me = jax.process_index()
        processes = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}) if process_local else ocp.options.MultiprocessingOptions()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1, enable_async_checkpointing=async_save,
            create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only, multiprocessing_options=processes,
        )
        absl = logging.getLogger("absl")
        level = absl.level
        if read_only:  # orbax warns that a read-only directory is read-only: noise in every export and eval
            absl.setLevel(logging.ERROR)
        try:
            self._mgr = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl.setLevel(level)

    def latest_step(self) -> int | None:
        """Returns the newest committed step, or None."""
        return self._mgr.latest_step()

    def save(self, step: int, params: Any, config: config_lib.Config, opt_state: Any = None, data_state: dict | None = None,
             base: dict | None = None) -> None:
        """Starts an (async) save of `step`; `wait()` blocks until it is committed."""
        items = {"params": ocp.args.StandardSave(params, save_args=_layer_chunks(params)), "config": ocp.args.JsonSave(config_lib.to_dict(config))}
        if base is not None:
            items["base"] = ocp.args.JsonSave(base)
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        if data_state is not None:  # captured now: an async save may serialize it after the iterator moved on
            items["data_state"] = ocp.args.JsonSave(json.loads(json.dumps(data_state)))
        self._mgr.save(step, args=ocp.args.Composite(**items), force=True)

    def config(self, step: int | None = None) -> config_lib.Config:
        """Returns the Config saved with `step` (default: latest)."""
        step = self._step(step)
        raw = self._mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        return config_lib.from_dict(raw, where=f"{self.directory}/{step}/config")

    def base(self, step: int | None = None) -> dict | None:
        """Returns the base record saved with `step` (default: latest), or None when the step holds the whole model."""
        step = self._step(step)
        if "base" not in self.item_names(step):
            return None
        return self._mgr.restore(step, args=ocp.args.Composite(base=ocp.args.JsonRestore()))["base"]

    def restore(self, step: int | None, abstract_params: Any, abstract_opt_state: Any = None, data_state: bool = False) -> dict:
        """Returns {"params", ["opt_state"], ["data_state"]} of `step`, placed like the abstract trees."""
        step = self._step(step)
        items = {"params": ocp.args.StandardRestore(abstract_params)}
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        if data_state and "data_state" in self.item_names(step):
            if not (self.directory / str(step) / "data_state" / "metadata").exists():
                raise MaxlmError(f"{self.directory / str(step)}: its data_state is one process's Grain state (an older maxlm); "
                                 "this maxlm saves one global position: resume from a newer step or start a new run_dir")
            items["data_state"] = ocp.args.JsonRestore()
        return dict(self._mgr.restore(step, args=ocp.args.Composite(**items)))

    def restore_checked(self, step: int, abstract_params: Any, abstract_opt_state: Any = None, data_state: bool = False) -> dict:
        """Returns restore(...) of `step`; a step that cannot be read raises MaxlmError naming the newest intact earlier step."""
        try:
            return self.restore(step, abstract_params, abstract_opt_state, data_state)
        except MaxlmError:
            raise
        except Exception as e:  # orbax and tensorstore raise many types for missing or truncated files
            raise self.damaged(step, e, lambda s: self.restore(s, abstract_params, abstract_opt_state, data_state)) from None

    def damaged(self, step: int, error: Exception, probe) -> MaxlmError:
        """Returns the error for a committed `step` that failed to read: the newest earlier step that `probe` reads, and how to use it."""
        # tensorstore appends its whole spec to the message: the first part says what failed
        reason = " ".join(str(error).split(" See full TensorStore details")[0].split())[:200] or "unreadable"
        intact = next((s for s in sorted((s for s in self._mgr.all_steps() if s < step), reverse=True) if _reads(probe, s)), None)
        moved = self.directory.parent / f"damaged-step-{step}"
        later = [s for s in self._mgr.all_steps() if s > step]
        if intact is None:
            advice = "no earlier step is intact; start over in a new run_dir"
        else:
            advice = (f"step {intact} is intact: to resume from it, move the damaged step out of the way "
                      f"(mv {self.directory / str(step)} {moved}" + (f", and the later steps {later}" if later else "") + ") and rerun")
        return MaxlmError(f"checkpoint {self.directory / str(step)} is damaged and cannot be read ({type(error).__name__}: {reason}); {advice}")

    def item_names(self, step: int | None = None) -> set[str]:
        """Returns which items (params, opt_state, data_state, config) `step` holds."""
        step = self._step(step)
        return {p.name for p in (self.directory / str(step)).iterdir() if p.is_dir()}

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._mgr.wait_until_finished()
        self._mgr.close()

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
        if step is None or step not in self._mgr.all_steps():
            raise MaxlmError(f"{self.directory}: no committed checkpoint{'' if step is None else f' at step {step}'}")
        return step


def _reads(probe, step: int) -> bool:
    """Returns whether `probe(step)` reads the step without error."""
    try:
        probe(step)
        return True
    except Exception:  # the same many types as in restore_checked
        return False


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """Returns ShapeDtypeStructs for `tree`, with `shardings` attached when given."""
    if shardings is None:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), tree)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
