"""The metrics window: means over the logged steps, running totals, the non-finite guard."""

from __future__ import annotations

import pytest

from maxlm.errors import MaxlmError
from maxlm.train.metrics import Window


def step(loss, nonfinite=0, **extra):
    return {"loss": loss, "grad_norm": 1.0, "tokens": 10.0, "count": 4.0, "nonfinite": nonfinite, "z_loss": 0.5} | extra


def test_a_record_is_the_windows_means_and_the_next_window_starts_empty():
    w = Window(max_consecutive_nonfinite=3, z_loss=False, generates=False, tokens_trained=100.0)
    w.add(1, step(2.0), t_wall=1.0, t_data=0.25)
    w.add(2, step(4.0), t_wall=1.0, t_data=0.25)
    r = w.record(2, 1e-3, flops_per_token=0.0, peak=None, skipped_records=7)
    assert r["loss"] == 3.0 and r["tokens_per_second"] == 10.0 and r["data_wait_fraction"] == 0.25
    assert r["tokens_trained"] == 108.0 and r["skipped_records"] == 7 and r["mfu"] is None
    assert "z_loss" not in r and "generation_fraction" not in r  # train.z_loss off; no sampling
    w.add(3, step(6.0), t_wall=2.0, t_data=0.0)
    assert w.record(3, 1e-3, 0.0, None, 0)["loss"] == 6.0


def test_generation_time_is_its_own_share_not_data_wait():
    w = Window(3, z_loss=True, generates=True)
    w.add(1, step(1.0, generate_seconds=0.5), t_wall=1.0, t_data=0.75)
    r = w.record(1, 1e-3, 0.0, None, 0)
    assert r["generation_fraction"] == 0.5 and r["data_wait_fraction"] == 0.25 and r["z_loss"] == 0.5
    assert "tokens_trained" not in r and "generate_seconds" not in r


def test_non_finite_steps_are_counted_and_too_many_in_a_row_stop_the_run():
    w = Window(max_consecutive_nonfinite=2, z_loss=False, generates=False)
    w.add(1, step(float("nan"), nonfinite=1), 1.0, 0.0)
    w.add(2, step(1.0), 1.0, 0.0)
    w.add(3, step(float("nan"), nonfinite=1), 1.0, 0.0)
    assert w.skipped_updates == 2 and w.consecutive_bad == 1
    with pytest.raises(MaxlmError, match="step 4: 2 non-finite losses or gradients in a row"):
        w.add(4, step(float("nan"), nonfinite=1), 1.0, 0.0)


def test_a_torn_last_line_is_cut_when_a_run_resumes(tmp_path):
    from maxlm.train.metrics import MetricsWriter

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "tokens_trained": 8.0}\n{"step": 2, "loss": 1.9, "tok')
    writer = MetricsWriter(tmp_path)
    writer.truncate_after(5)  # a kill mid-append left half a line; resuming reads the rest as it was
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0, "tokens_trained": 8.0}\n'
    assert writer.last_value("tokens_trained", 0.0) == 8.0
    writer.close()
