"""Pipeline YAML validation: every mistake fails before any work, naming file:line and the key."""

from __future__ import annotations

import pytest

from curate_outputs import REPO
from data_pipelines.curate.cli import main
from data_pipelines.curate.config import load_pipeline
from data_pipelines.curate.stages import STAGES
from maxlm.errors import MaxlmError


def test_shipped_pipelines_load():
    web = load_pipeline(REPO / "configs/curation/english_web.yaml", STAGES)
    assert [s.name for s in web.stages] == [
        "langid", "gopher_quality", "c4", "fineweb", "gopher_repetition", "pii", "exact_dedup", "minhash_dedup"]
    mh = web.stages[-1].params
    assert (mh.ngram, mh.bands, mh.rows) == (5, 14, 8)
    sft = load_pipeline(REPO / "configs/curation/instructions.yaml", STAGES)
    assert sft.input.text_key == ["prompt", "instruction", "question", "messages", "chosen"]
    assert sft.stages[2].params.fields == ["prompt", "instruction", "question", "messages", "chosen", "input"]


@pytest.mark.parametrize("path", sorted((REPO / "configs/curation").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_loads(path):
    assert load_pipeline(path, STAGES).stages


def test_unknown_stage_names_line_and_nearest(write_yaml):
    p = write_yaml("stages:\n  - langid: {}\n  - gopher_qualty: {}\n")
    with pytest.raises(MaxlmError) as e:
        load_pipeline(p, STAGES)
    msg = str(e.value)
    assert f"{p}:3" in msg and "gopher_qualty" in msg and "did you mean 'gopher_quality'" in msg


def test_unknown_param_names_line_key_and_nearest(write_yaml):
    p = write_yaml("stages:\n  - langid:\n      keep: [en]\n      min_scor: 0.5\n")
    with pytest.raises(MaxlmError) as e:
        load_pipeline(p, STAGES)
    msg = str(e.value)
    assert f"{p}:4" in msg and "stages[0].langid.min_scor" in msg and "did you mean stages[0].langid.min_score?" in msg


def test_bad_types_and_ranges(write_yaml):
    cases = {
        "stages:\n  - minhash_dedup: {bands: many}\n": "stages[0].minhash_dedup.bands must be an integer",
        "stages:\n  - langid: {min_score: 1.5}\n": "min_score: must be a fraction",
        "stages:\n  - gopher_quality: {min_words: 500, max_words: 10}\n": "min_words: must be <= max_words",
        "output: {format: csv}\nstages: [pii]\n": "output.format must be one of jsonl.zst, parquet",
        "executor: rey\nstages: [pii]\n": "did you mean 'ray'",
        "stages: []\n": "non-empty list",
        "stages:\n  - [pii]\n": "must be a stage name",
        "inptu: {}\nstages: [pii]\n": "did you mean input\\?",
    }
    for text, expected in cases.items():
        with pytest.raises(MaxlmError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            load_pipeline(write_yaml(text), STAGES)


def test_invalid_yaml_names_line(write_yaml):
    with pytest.raises(MaxlmError, match=r"pipeline.yaml:\d+: invalid YAML"):
        load_pipeline(write_yaml("stages:\n  - pii: {a: [1, 2}\n"), STAGES)


def test_cli_fails_before_any_work(write_yaml, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    p = write_yaml("stages:\n  - pii: {emials: true}\n")
    out = tmp_path / "out"
    rc = main(["curate", str(p), "--input", str(tmp_path / "in.jsonl"), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean stages[0].pii.emails?" in err and "Traceback" not in err
    assert not out.exists()  # nothing was started


def test_cli_missing_input_and_duplicate_stage_labels(write_yaml, tmp_path, capsys):
    p = write_yaml("stages:\n  - length: {field: text}\n  - length: {field: title, min_words: 1}\n")
    cfg = load_pipeline(p, STAGES)
    assert [s.label for s in cfg.stages] == ["length", "length#2"]
    rc = main([str(p), "--input", str(tmp_path / "nothing-*.jsonl"), "--output", str(tmp_path / "o")])
    assert rc == 2 and "no files match" in capsys.readouterr().err


def test_values_go_through_the_one_maxlm_loader(write_yaml):
    import data_pipelines.curate.config as dp_config
    import maxlm.config

    assert dp_config.build is maxlm.config.build and dp_config.read_yaml is maxlm.config.read_yaml  # one loader for every config
    cases = {
        "workers: '2'\nstages: [pii]\n": "workers must be an integer",  # quoted numbers are strings
        "input:\nstages: [pii]\n": "input must be a mapping",
        "input: {format: csv}\nstages: [pii]\n": "input.format must be one of auto, jsonl, parquet, text",
        "stages:\n  - gopher_repetition: {max_top_ngram_char_frac: [0.2]}\n": "max_top_ngram_char_frac must be a mapping",
        "stages:\n  - gopher_repetition: {max_top_ngram_char_frac: {'2': 0.2}}\n": "max_top_ngram_char_frac key must be an integer",
        "stages:\n  - gopher_repetition: {max_top_ngram_char_frac: {2: lots}}\n": "max_top_ngram_char_frac.2 must be a number",
        "workers: -1\nstages: [pii]\n": r"pipeline\.yaml:1: workers must be >= 0, got -1",  # ranges stated on the fields
        "stages: [pii]\nbatch_size: 0\n": r"pipeline\.yaml:2: batch_size must be > 0, got 0",
        "dedup_memory_mb: 0\nstages: [pii]\n": r"pipeline\.yaml:1: dedup_memory_mb must be > 0, got 0",
        "input: {warc_timeout_s: 0}\nstages: [pii]\n": r"pipeline\.yaml:1: input\.warc_timeout_s must be in \(0, 86400\], got 0",
        "input:\n  warc_timeout_s: .inf\nstages: [pii]\n": r"pipeline\.yaml:2: input\.warc_timeout_s must be in \(0, 86400\], got inf",
        "input: {warc_timeout_s: soon}\nstages: [pii]\n": r"input\.warc_timeout_s must be a number",
    }
    for text, expected in cases.items():
        with pytest.raises(MaxlmError, match=expected):
            load_pipeline(write_yaml(text), STAGES)
    cfg = load_pipeline(write_yaml("output: {format: arrayrecord}\nstages:\n  - gopher_repetition: {max_top_ngram_char_frac: {2: 0.3}}\n"), STAGES)
    assert cfg.output.format == "arrayrecord" and cfg.stages[0].params.max_top_ngram_char_frac == {2: 0.3}
    assert cfg.input.warc_timeout_s == 1.0  # datatrove's Trafilatura default
    assert load_pipeline(write_yaml("input: {warc_timeout_s: 2}\nstages: [pii]\n"), STAGES).input.warc_timeout_s == 2.0


def test_literal_and_dict_fields_are_never_nested():
    """Curation fields keep to the plain shapes: a Literal or dict field is the field's own type
    (the one loader checks them nested too: tests/config/test_load.py)."""
    import dataclasses
    import types
    import typing

    from data_pipelines.curate.config import InputConfig, OutputConfig, PipelineConfig
    from data_pipelines.curate.stages import STAGES

    def unchecked(t) -> bool:
        origin = typing.get_origin(t)
        if origin is typing.Literal:
            return False
        if origin in (list, typing.Union, types.UnionType):
            return any(typing.get_origin(a) in (typing.Literal, dict) or unchecked(a) for a in typing.get_args(t))
        return any(unchecked(a) for a in typing.get_args(t))

    classes = [InputConfig, OutputConfig, PipelineConfig] + [s.Params for s in STAGES.values()]
    bad = [(c.__qualname__, f.name) for c in classes for f in dataclasses.fields(c)
           if f.metadata.get("yaml", True) and unchecked(typing.get_type_hints(c)[f.name])]
    assert not bad
