"""`maxlm compile`: the train step compiled by libtpu for an abstract TPU slice (needs the [aot] extra)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from maxlm.cli import main
from maxlm.config import load
from maxlm.parallel.rules import RULES
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh
from maxlm.parallel.rules import logical_to_spec
from maxlm.parallel.topology import abstract_devices, parse_slice
from maxlm.train import aot

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "models" / "tiny.yaml")
SMALL = ["model.vocab_size=512", "data.seq_len=128", "train.global_batch_size=8", "model.dtype=bfloat16"]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason='libtpu missing: pip install -e ".[aot]"')


def _leaves(tree, is_leaf=None):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)}


def test_every_leaf_of_the_compiled_step_is_sharded_as_the_rules_table_says():
    cfg = aot.prepare(load.load_config(TINY, [*SMALL, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]))
    mesh = make_mesh(cfg.mesh, abstract_devices(parse_slice("v5litepod-8")))
    compiled = aot.lower(cfg, mesh).compile()
    (params_in, opt_in, batch_in, _, _), _ = compiled.input_shardings
    params_out, opt_out, _ = compiled.output_shardings
    _, shapes, names = params_lib.abstract(cfg.model)
    shape_of, names_of = _leaves(shapes), _leaves(names, is_leaf=lambda x: isinstance(x, P))
    expected = {k: logical_to_spec(tuple(names_of[k]), shape_of[k].shape, dict(mesh.shape)) for k in shape_of}
    assert expected["['embed']"] == P("tensor", "fsdp")  # the table is not trivial on this mesh
    adam_in, adam_out = opt_in[-1], opt_out[-1]
    for tree in (params_in, params_out, adam_in.mu, adam_in.nu, adam_out.mu, adam_out.nu):
        got = _leaves(tree)
        assert got.keys() == expected.keys()
        for k, sharding in got.items():
            assert sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, expected[k]), len(shape_of[k].shape)), k
    assert adam_in.count.is_fully_replicated and adam_out.count.is_fully_replicated
    for k, sharding in batch_in.items():
        assert sharding.spec == P(RULES["batch"]), k
    # XLA's own accounting agrees: the arguments hold each leaf's shard (params and both f32 moments), not a replica.
    shard_bytes = sum(math.prod(sh.shard_shape(shape_of[k].shape)) * shape_of[k].dtype.itemsize for k, sh in _leaves(params_in).items())
    args = compiled.memory_analysis().argument_size_in_bytes
    assert 3 * shard_bytes <= args < 3 * shard_bytes + 2**20  # + the batch shard and the step counter


@pytest.mark.parametrize("task", [["task=dpo", "dpo.kind=simpo"], ["task=grpo", "rl.max_prompt_len=32", "rl.max_new_tokens=32",
                                                                              "train.global_batch_size=2", "rl.group_size=4"]])
def test_every_task_compiles_from_its_own_batch_layout(task):
    report = aot.compile_step(load.load_config(TINY, [*SMALL, *task]), "v5p-8", cost=False)
    assert report["devices"] == 4 and report["device_kind"] == "TPU v5" and report["fits"]


def test_report_estimates_the_step_and_mfu_against_the_v5p_peak(capsys):
    assert main(["compile", TINY, *SMALL, "--topology", "v5p-8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mesh"] == {"data": 4, "fsdp": 1, "expert": 1, "context": 1, "tensor": 1} and report["hbm_gib"] == 95.0
    # The unrolled extrapolation counts every layer: XLA's FLOPs are the model's 6·N·tokens plus a little (softmax, norms).
    assert 1.0 <= report["flops_per_step"] / report["model_flops_per_step"] < 1.3
    assert 0 < report["estimated_mfu"] < 1 and "459" in report["mfu_peak"]


def test_a_step_that_does_not_fit_is_one_line_naming_the_shortfall_and_the_knobs(capsys):
    # 64 rows of 4096 tokens a chip: the [B, H, T, T] attention scores alone need ~16 GiB per layer.
    args = [TINY, "model.vocab_size=512", "data.seq_len=4096", "model.max_seq_len=4096", "train.global_batch_size=256"]
    assert main(["compile", *args, "--topology", "v5litepod-4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GiB short" in err[0] and "model.remat=" in err[0], err


def test_a_lora_step_compiles_with_optimizer_state_for_the_adapters_only():
    mesh = make_mesh(load.load_config(TINY, SMALL).mesh, abstract_devices(parse_slice("v5p-8")))
    args = {"full": aot.lower(aot.prepare(load.load_config(TINY, SMALL)), mesh).compile().memory_analysis().argument_size_in_bytes}
    for base in ("param_dtype", "bfloat16", "nf4"):
        cfg = aot.prepare(load.load_config(TINY, [*SMALL, "lora.rank=8", f"lora.base_dtype={base}", "lora.nf4_block=16"]))
        compiled = aot.lower(cfg, mesh).compile()
        (params_in, opt_in, _, _, _), _ = compiled.input_shardings
        moments = _leaves(opt_in[-1].mu)
        assert moments and all("_lora" in k for k in moments), base  # the frozen base gets no AdamW state
        assert any("_lora" not in k for k in _leaves(params_in)), base
        args[base] = compiled.memory_analysis().argument_size_in_bytes
    # per chip: no moments for the base; then its floats in bf16, or its projections in 4 bits (embeddings stay f32)
    assert max(args["nf4"], args["bfloat16"]) < args["param_dtype"] < args["full"] / 1.5, args


def test_splash_attention_compiles_into_the_step_and_stores_no_scores():
    long = ["model.vocab_size=512", "data.seq_len=1024", "train.global_batch_size=8", "model.dtype=bfloat16", "model.max_seq_len=1024",
            "mesh.data=2", "mesh.fsdp=1", "mesh.tensor=2"]
    mesh = make_mesh(load.load_config(TINY, long).mesh, abstract_devices(parse_slice("v5p-8")))
    temps = {}
    for impl in ("xla", "splash"):
        lowered = aot.lower(aot.prepare(load.load_config(TINY, [*long, f"model.attention={impl}"])), mesh)
        # Mosaic kernels: the forward and the two backward ones (dq, dk/dv), in the scanned layer
        assert lowered.as_text().count("tpu_custom_call") == (3 if impl == "splash" else 0), impl
        temps[impl] = lowered.compile().memory_analysis().temp_size_in_bytes
    print({k: f"{v / 2**20:.0f} MiB" for k, v in temps.items()})
    # no [B, N, T, T] f32 scores kept for the backward pass: 4 rows x 2 heads x 1024² x 4 bytes = 32 MiB a layer
    assert temps["splash"] < temps["xla"] - 32 * 2**20, temps


def test_splash_kernels_flops_join_the_estimate(capsys):
    # XLA's cost model cannot see into the Mosaic kernels: their FLOPs are added at the peak and the estimate says so
    assert main(["compile", TINY, *SMALL, "data.seq_len=256", "model.attention=splash", "--topology", "v5p-8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "splash kernels" in report["estimate"]
    cfg = aot.prepare(load.load_config(TINY, [*SMALL, "data.seq_len=256", "model.attention=splash"]))
    # 7 passes (2 forward, 5 backward) over the causal half of the keys, 2 layers, 4 heads of 16, 8 rows
    kernels = aot.kernel_flops(cfg, (8, 256))
    assert kernels == 7 * 2 * 256 * (2 * 128.5) * 4 * 16 * 8
    # the model count takes attention over all T keys (PaLM's), the kernels only the causal half: a bit below it
    assert report["flops_per_step"] > kernels and 0.7 < report["flops_per_step"] / report["model_flops_per_step"] < 1.3
