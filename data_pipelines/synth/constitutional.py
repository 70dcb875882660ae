"""Critique and revision (the supervised stage of Constitutional AI, Bai et al. 2022): for each
prompt the model answers, critiques its answer against one sampled principle, then rewrites
it; the rewrite is an sft target and (rewrite, original) a preference pair.

Writes `{"id", "prompt", "response", "original", "critique", "principle"}` sft records and
`{"id", "prompt", "chosen", "rejected", "principle"}` pairs (chosen = the revision, rejected
= the first answer), both of which `maxlm train` reads as they are. A prompt whose answer,
critique or revision is empty, whose answer or revision is cut off by the token budget, or
whose revision changes nothing, gives neither record.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from data_pipelines.synth.generate import Complete, Message, was_truncated
from data_pipelines.synth.outputs import JsonlOutput, read_progress, write_progress
from maxlm.data.records import read_records
from maxlm.errors import MaxlmError


@dataclass(frozen=True)
class Principle:
    """One principle: a request to critique the last answer against it, and one to revise the answer."""

    name: str
    critique: str
    revision: str


def load_principles(path: str | Path) -> list[Principle]:
    """Returns the principles of a YAML file `principles: [{name, critique, revision}, ...]`."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaxlmError(f"{path}: principles file not found") from None
    except yaml.YAMLError as e:
        raise MaxlmError(f"{path}: invalid YAML: {e}") from None
    items = doc.get("principles") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise MaxlmError(f"{path}: expected a non-empty list under the key 'principles'")
    principles, names = [], set()
    for i, item in enumerate(items):
        at = f"{path}: principles[{i}]"
        if not isinstance(item, dict):
            raise MaxlmError(f"{at}: expected a mapping with name, critique, revision")
        unknown = set(item) - {"name", "critique", "revision"}
        if unknown:
            raise MaxlmError(f"{at}: unknown key {sorted(unknown)[0]!r}; expected name, critique, revision")
        for key in ("name", "critique", "revision"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise MaxlmError(f"{at}.{key}: expected a non-empty string")
        if item["name"] in names:
            raise MaxlmError(f"{at}.name: {item['name']!r} is used twice")
        names.add(item["name"])
        principles.append(Principle(item["name"], item["critique"].strip(), item["revision"].strip()))
    return principles


def prompt_id(messages: list[Message]) -> str:
    """Returns a stable id of a prompt: a hash of its messages (so reruns and resumes agree)."""
    return hashlib.sha1(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def read_prompts(path: str) -> list[list[Message]]:
    """Returns the prompts of a file of prompt records (`{"prompt"}`, gsm8k, Alpaca, hh-rlhf), as conversations."""
    records, _ = read_records(path, "ppo")
    return [r.prompt for r in records]


def pick_principle(principles: list[Principle], pid: str, seed: int) -> Principle:
    """Returns the principle a prompt is revised against: random, but fixed by (seed, prompt id)."""
    rng = np.random.default_rng([seed, int(pid[:8], 16)])
    return principles[int(rng.integers(len(principles)))]


def constitutional(
    prompts: list[list[Message]],
    principles: list[Principle],
    complete: Complete,
    sft_output: str | Path,
    pairs_output: str | Path,
    *,
    batch_size: int = 8,
    seed: int = 0,
    log=print,
) -> dict:
    """Returns the summary {"generated", "kept", "removed": {reason: n}} after critiquing and revising every prompt.

    Resumable: prompts whose sft record exists, or that were removed before (the progress
    file beside `sft_output` lists them), are skipped; a pair lost to a crash between the two
    appends is rebuilt from its sft record.
    """
    if batch_size < 1:
        raise MaxlmError(f"--batch-size must be >= 1, got {batch_size}")
    sft, pairs = JsonlOutput(sft_output, log), JsonlOutput(pairs_output, log)
    for i, r in enumerate(sft.records, 1):
        if not all(isinstance(r.get(k), str) for k in ("id", "response", "original", "principle")):
            raise MaxlmError(f"{sft_output}:{i}: not a constitutional sft record (expected 'id', 'response', 'original', 'principle')")
    paired = {r.get("id") for r in pairs.records}
    pairs.append([_pair(r) for r in sft.records if r["id"] not in paired])
    progress = read_progress(sft_output)
    removed_ids = set(progress.get("removed_ids", []))
    removed = Counter(progress.get("removed", {}))
    generated = progress.get("generated", 0)
    done = {r["id"] for r in sft.records} | removed_ids
    unique = {prompt_id(p): p for p in prompts}
    if len(unique) < len(prompts):
        log(f"{len(prompts) - len(unique)} repeated prompts are done once")
    todo = [(pid, p) for pid, p in unique.items() if pid not in done]
    if done:
        log(f"resuming: {len(unique) - len(todo)} of {len(unique)} prompts already done")
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        kept, dropped = _revise_batch(batch, principles, complete, seed)
        generated += len(batch)
        sft.append(kept)
        pairs.append([_pair(r) for r in kept])
        for pid, reason in dropped:
            removed[reason] += 1
            removed_ids.add(pid)
        write_progress(sft_output, {"generated": generated, "kept": len(sft.records), "removed": dict(removed),
                                    "removed_ids": sorted(removed_ids)})
        log(f"prompts {start + len(batch)}/{len(todo)}: {len(kept)} of {len(batch)} revised and kept; {len(sft.records)} kept in all")
    return {"generated": generated, "kept": len(sft.records), "removed": dict(sorted(removed.items()))}


def _revise_batch(batch, principles, complete: Complete, seed: int) -> tuple[list[dict], list[tuple[str, str]]]:
    """Returns (sft records of the prompts that made it, (id, reason) of those that did not)."""
    dropped = []
    answers = complete([p for _, p in batch])
    live = []
    for (pid, prompt), answer in zip(batch, answers):
        reason = "empty_answer" if not answer.strip() else "truncated" if was_truncated(answer) else None
        if reason:
            dropped.append((pid, reason))
        else:
            principle = pick_principle(principles, pid, seed)
            live.append((pid, prompt, principle, prompt + [{"role": "assistant", "content": answer.strip()},
                                                           {"role": "user", "content": principle.critique}]))
    critiques = complete([conv for *_, conv in live]) if live else []
    criticized = []
    for item, critique in zip(live, critiques):
        if critique.strip():
            criticized.append((item, critique))
        else:
            dropped.append((item[0], "empty_critique"))  # a revision with nothing to act on is a resample
    revise = [conv + [{"role": "assistant", "content": c.strip()}, {"role": "user", "content": pr.revision}]
              for (_, _, pr, conv), c in criticized]
    revisions = complete(revise) if revise else []
    kept = []
    for ((pid, prompt, principle, conv), critique), revision in zip(criticized, revisions):
        original, text = conv[-2]["content"], revision.strip()
        reason = ("empty_revision" if not text else "truncated" if was_truncated(revision)
                  else "unchanged" if text == original else None)
        if reason:
            dropped.append((pid, reason))
            continue
        kept.append({"id": pid, "prompt": _as_record_prompt(prompt), "response": text, "original": original,
                     "critique": critique.strip(), "principle": principle.name})
    return kept, dropped


def _pair(sft_record: dict) -> dict:
    r = sft_record
    return {"id": r["id"], "prompt": r["prompt"], "chosen": r["response"], "rejected": r["original"], "principle": r["principle"]}


def _as_record_prompt(messages: list[Message]) -> str | list[Message]:
    """Returns a one-message user prompt as its text, as most prompt files write it; a conversation as is."""
    return messages[0]["content"] if len(messages) == 1 and messages[0]["role"] == "user" else messages
