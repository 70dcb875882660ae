"""Several JAX processes on one machine, started by tools/launch/local.py and wired by jax.distributed
from the environment: pretraining trains the losses of one process on the same devices and resumes
with another process count (process 0 trains the tokenizer), GRPO trains and resumes, the
sampler's rows do not depend on how processes split the batch, and a SIGTERM that reaches one
process stops both before one step."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_run import write_tiny_config

REPO = Path(__file__).resolve().parents[2]


LAUNCH = REPO / "tools" / "launch" / "local.py"


def launch_two(config: Path, *overrides: str, argv: list[str] | None = None, processes: int = 2, devices: int = 2) -> list[str]:
    """Returns each process's output of `maxlm train config overrides` (or `python argv`), run by
    tools/launch/local.py as two (or `processes`) processes with 2 (or `devices`) CPU devices each; asserts all succeeded."""
    cmd = [sys.executable, *argv] if argv else [sys.executable, "-m", "maxlm.cli", "train", str(config), *overrides]
    run = subprocess.run([sys.executable, str(LAUNCH), "-n", str(processes), "--cpu-devices", str(devices), "--", *cmd],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return ["".join(line[4:] for line in run.stdout.splitlines(True) if line.startswith(f"[{i}] ")) for i in range(processes)]


@pytest.mark.slow
def test_processes_train_one_process_losses_and_resume_with_another_count(tmp_path, shared_data):
    from maxlm.config import load_config
    from maxlm.train.run import train

    path = write_tiny_config(
        # constant: the learning rate of a step does not depend on train.steps, which the resume raises
        tmp_path, shared_data, data={"seq_len": 64}, train={"steps": 4, "schedule": "constant"}, checkpoint={"interval_steps": 2},
        sample={"prompts": ["To be", "My lord"], "max_new_tokens": 4}, export={"hf_dir": "hf"},
    )
    first = launch_two(path, processes=2, devices=4)
    for out in first:
        assert "8 cpu devices" in out and "'data': 8" in out
    # Process 0 trains the tokenizer; process 1 waits for it and loads the same file.
    assert "sentencepiece tokenizer" in first[0] and "sentencepiece tokenizer" not in first[1]
    # The end of the run: every process samples (a collective), process 0 writes and exports
    # while the others wait for it rather than for JAX's shutdown barrier.
    assert "samples:" in first[0] and "samples:" not in first[1] and "Hugging Face export" in first[0]
    assert (tmp_path / "run" / "samples.txt").read_text().count("To be") == 1
    assert json.loads((tmp_path / "run" / "hf" / "config.json").read_text())["num_hidden_layers"] > 0
    # Elastic restart: the checkpoint of 2 processes x 4 devices resumes as 4 processes x 2 devices.
    for out in launch_two(path, "train.steps=6", processes=4, devices=2):
        assert "resumed from" in out and "8 cpu devices" in out
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()} >= {"4", "6"}
    # One process with the same 8 devices (this one), uninterrupted, on the same tokenizer: the same losses.
    one = train(load_config(path, [f"run_dir={tmp_path / 'one'}", "train.steps=6", "sample.prompts=[]", "export.hf_dir="]), log=lambda *_: None)
    np.testing.assert_allclose([r["loss"] for r in rows], [one.losses[s] for s in range(1, 7)], rtol=1e-4)


@pytest.mark.slow
def test_a_sigterm_to_one_process_stops_both_at_one_step(tmp_path, shared_data):
    # A scheduler's signals reach the hosts at different moments: here only process 1 gets one. Both
    # must stop before the same step and save it, or the other would wait in a collective forever.
    path = write_tiny_config(tmp_path, shared_data, train={"steps": 100000}, checkpoint={"interval_steps": 10})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, logs = [], [tmp_path / f"p{i}.log" for i in range(2)]
    for i in range(2):
        env = dict(os.environ, MAXLM_COORDINATOR=f"127.0.0.1:{port}", MAXLM_NUM_PROCESSES="2", MAXLM_PROCESS_ID=str(i),
                   JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
        with open(logs[i], "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "maxlm.cli", "train", str(path)], stdout=out,
                                          stderr=subprocess.STDOUT, env=env, cwd=REPO))
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "run" / "checkpoints" / "10").is_dir():
            assert time.monotonic() < deadline and None in [p.poll() for p in procs], "".join(l.read_text() for l in logs)
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outs = [l.read_text() for l in logs]
    assert [p.returncode for p in procs] == [0, 0], outs
    saved = [int(out.split("SIGTERM: saved step ")[1].split()[0]) for out in outs]
    assert saved[0] == saved[1] >= 10, outs
    for out in launch_two(path, f"train.steps={saved[0] + 2}"):
        assert f"resumed from {tmp_path / 'run' / 'checkpoints'}/{saved[0]}" in out
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, saved[0] + 3))


SAMPLE = """
import sys
import numpy as np
from maxlm.config import MeshConfig, ModelConfig
from maxlm.infer.sampler import generate
from maxlm.models import params as params_lib
from maxlm.parallel.distributed import initialize_from_env
from maxlm.parallel.mesh import make_mesh
import jax
initialize_from_env()
cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=32)
graphdef, _, _ = params_lib.abstract(cfg)
params = params_lib.init(cfg, make_mesh(MeshConfig(data=-1)), 0)
rng = np.random.default_rng(0)
prompts = [list(rng.integers(1, 64, n)) for n in (3, 7, 5, 2, 6, 4, 8, 1)]
i = jax.process_index()
sampled = generate(graphdef, cfg, params, prompts[4 * i:4 * i + 4], 8, temperature=1.0, seed=5, pad_to=8)
greedy = generate(graphdef, cfg, params, prompts[3 * i:3 * i + 3], 8, temperature=0.0, pad_to=8)
np.save(sys.argv[1] + f"/sampled{i}.npy", sampled)
np.save(sys.argv[1] + f"/greedy{i}.npy", greedy)
"""


@pytest.mark.slow
def test_two_processes_sample_the_rows_one_process_samples(tmp_path):
    import jax
    import numpy as np

    from maxlm.config import MeshConfig, ModelConfig
    from maxlm.infer.sampler import generate
    from maxlm.models import params as params_lib
    from maxlm.parallel.mesh import make_mesh

    launch_two(None, argv=["-c", SAMPLE, str(tmp_path)])
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=32)
    graphdef, _, _ = params_lib.abstract(cfg)
    params = params_lib.init(cfg, make_mesh(MeshConfig(data=4), jax.devices()[:4]), 0)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, 64, n)) for n in (3, 7, 5, 2, 6, 4, 8, 1)]
    # The global batch is process 0's rows, then process 1's: one process with 4 devices samples the same tokens.
    got = np.concatenate([np.load(tmp_path / f"sampled{i}.npy") for i in range(2)])
    want = generate(graphdef, cfg, params, prompts, 8, temperature=1.0, seed=5, pad_to=8)
    assert got.shape == want.shape == (8, 16)
    np.testing.assert_array_equal(got, want)
    # 3 rows per process on 2 devices each: padded to whole shards, the padding cut off again.
    got = np.concatenate([np.load(tmp_path / f"greedy{i}.npy") for i in range(2)])
    want = generate(graphdef, cfg, params, prompts[:6], 8, temperature=0.0, pad_to=8)
    assert got.shape == want.shape == (6, 16)
    np.testing.assert_array_equal(got, want)


# The menu's collectives: a batch std over both processes' rows, dynamic sampling's rounds agreed by both (they
# cover plain grpo's). The resume runs with rl.kl_in reward, whose batch std is taken inside the jitted step, on the
# global batch.
MENU = {"scale_rewards": "batch", "dynamic_sampling": True, "max_sampling_rounds": 2, "overlong_buffer": 2}


@pytest.mark.slow
def test_two_processes_run_grpo_and_resume(tmp_path):
    cfg = {
        "base_config": str(REPO / "configs" / "models" / "tiny.yaml"),
        "task": "grpo",
        "run_dir": str(tmp_path / "run"),
        "tokenizer": {"path": str(tmp_path / "tok.model"), "vocab_size": 280},
        "data": {"train_files": ["builtin:arithmetic"], "eval_files": ["builtin:arithmetic@eval"]},
        "rl": {"group_size": 2, "max_prompt_len": 40, "max_new_tokens": 4, "minibatches": 2, **MENU},
        "train": {"steps": 2, "global_batch_size": 4, "log_every": 1, "warmup_steps": 1, "eval_every": 2, "eval_steps": 1},
        "checkpoint": {"interval_steps": 2},
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    launch_two(path)
    for out in launch_two(path, "train.steps=4", "rl.kl_in=reward"):
        assert "resumed from" in out
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(0.0 <= r["eval_reward"] <= 1.0 for r in rows if "eval_reward" in r)
    assert all("reward_mean" in r and r["kl"] >= 0 for r in rows[1:])
    assert all(1 <= r["sampling_rounds"] <= 2 and "dropped_groups" in r for r in rows[1:])


@pytest.mark.slow
def test_every_process_stops_when_one_finds_its_lock_held(tmp_path, shared_data):
    path = write_tiny_config(tmp_path, shared_data)
    hold = "import sys, time\nfrom maxlm.train.run_dir import locked\nwith locked(sys.argv[1], 1):\n    print('locked', flush=True)\n    time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # a live run holds process 1's lock file only
        cmd = [sys.executable, "-m", "maxlm.cli", "train", str(path)]
        run = subprocess.run([sys.executable, str(LAUNCH), "-n", "2", "--cpu-devices", "2", "--", *cmd],
                             capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"pid {holder.pid}" in run.stdout and "process 1 of this run found its lock file held" in run.stdout
    assert not (tmp_path / "tok.model").exists()
