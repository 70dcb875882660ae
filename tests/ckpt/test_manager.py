"""The checkpoint manager's data position: one JSON item a run of any process count reads back, and an older
per-process Grain state refused by name."""

import copy

import jax
import numpy as np
import pytest

from maxlm.ckpt.manager import Checkpoints, abstract_like
from maxlm.config import Config
from maxlm.errors import MaxlmError

STATE = {"layout": {"version": 2, "rows": 4}, "grain": {"lanes": {"0": {"parent": {"next_index": 3}, "offset": 5}}}}


def _saved(tmp_path, data_state, moved_on=lambda: None) -> tuple[Checkpoints, dict]:
    """Returns (the manager, the params) after an async save of step 1; `moved_on` runs before the save commits."""
    params = {"w": jax.numpy.arange(6.0).reshape(2, 3)}
    ckpts = Checkpoints(tmp_path / "run", async_save=True)
    ckpts.save(1, params, Config(), data_state=data_state)
    moved_on()
    ckpts.wait()
    return ckpts, params


def test_data_position_is_one_json_item(tmp_path):
    state = copy.deepcopy(STATE)
    # The live iterator moves on while the save runs: the position saved is the one at its start.
    ckpts, params = _saved(tmp_path, state, moved_on=lambda: state["grain"]["lanes"]["0"].update(offset=6))
    got = ckpts.restore(1, abstract_like(params), data_state=True)
    assert got["data_state"]["grain"]["lanes"]["0"]["offset"] == 5
    np.testing.assert_array_equal(got["params"]["w"], params["w"])
    item = tmp_path / "run" / "checkpoints" / "1" / "data_state"
    assert (item / "metadata").exists() and not list(item.glob("process_*"))  # one file, not Grain's one per process
    ckpts.close()


def test_an_older_per_process_data_state_is_refused(tmp_path):
    ckpts, params = _saved(tmp_path, STATE)
    item = tmp_path / "run" / "checkpoints" / "1" / "data_state"
    (item / "metadata").rename(item / "process_0-of-1.json")  # how Grain's handler laid it out
    with pytest.raises(MaxlmError, match="one process's Grain state"):
        ckpts.restore(1, abstract_like(params), data_state=True)
    ckpts.close()
