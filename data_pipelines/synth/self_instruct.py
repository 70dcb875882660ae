"""Self-Instruct (Wang et al. 2022, and Alpaca's variant of it): new instruction-following
tasks from a model prompted with a handful of sampled ones, kept when they pass format
filters and are not too close (ROUGE-L) to any task already in the pool.

One round: sample a few human-written seed tasks (and, once there are some, a few of the
machine tasks kept so far), list them numbered in the Instruction / Input / Output layout,
end the prompt with the next number's open `Instruction:` header, let the model continue,
parse every numbered task out of the continuation, filter, append what survives.
Output records are Alpaca-shaped, `{"id", "instruction", "input", "output", "most_similar",
"rouge_l"}`, which `maxlm train` reads as sft records directly.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines.synth.generate import Complete, was_truncated
from data_pipelines.synth.outputs import JsonlOutput, read_progress, write_progress
from data_pipelines.synth.rouge import RougePool
from maxlm.errors import MaxlmError
from maxlm.files.readers import iter_records

NO_INPUT = "<noinput>"


@dataclass(frozen=True)
class Task:
    """One instruction-following task; `input` is "" when the instruction stands alone."""

    instruction: str
    input: str = ""
    output: str = ""


@dataclass(frozen=True)
class SelfInstructConfig:
    """How many tasks to make and how they are prompted for and filtered."""

    num_tasks: int
    prompts_per_batch: int = 8  # completions asked for in one call of the completion function
    seed: int = 0
    rouge_threshold: float = 0.7  # a task is dropped when its ROUGE-L F1 to any pool task reaches this
    prompt_seeds: int = 6  # human-written tasks shown in each prompt
    prompt_machine: int = 2  # machine tasks shown too, once that many have been kept
    tasks_per_prompt: int = 20  # how many tasks the prompt asks for (shown + new)
    min_words: int = 3
    max_words: int = 150
    patience: int = 10  # stop after this many batches in a row keep nothing (a model that cannot do it)


# ---------------------------------------------------------------- seeds


def load_seeds(path: str | Path) -> list[Task]:
    """Returns the tasks of a JSONL seed file: Alpaca seed tasks (first instance) or instruction/input/output records."""
    path = Path(path)
    if not path.is_file():
        raise MaxlmError(f"{path}: seed file not found")
    tasks = []
    for lineno, record in iter_records(str(path), "jsonl", strict=True):
        tasks.append(_seed_task(record, f"{path}:{lineno}"))
    if not tasks:
        raise MaxlmError(f"{path}: no seed tasks")
    return tasks


def _seed_task(r: object, where: str) -> Task:
    if not isinstance(r, dict):
        raise MaxlmError(f"{where}: expected a JSON object with 'instruction', got {type(r).__name__}")
    # Seed tasks list instances; the first is the one shown, as in Self-Instruct.
    inst = r["instances"][0] if isinstance(r.get("instances"), list) and r["instances"] else r
    if not isinstance(inst, dict):
        raise MaxlmError(f"{where}: 'instances' must hold {{'input', 'output'}} objects")
    fields = {"instruction": r.get("instruction"), "input": inst.get("input") or "", "output": inst.get("output")}
    for key, value in fields.items():
        if not isinstance(value, str) or (key != "input" and not value.strip()):
            got = "missing" if value is None else repr(value)[:40]
            raise MaxlmError(f"{where}: expected a non-empty string {key!r} (seed tasks: instruction, instances[0].output); got {got}")
    return Task(fields["instruction"].strip(), fields["input"].strip(), fields["output"].strip())


# ---------------------------------------------------------------- prompt


PREAMBLE = """You are asked to come up with a list of {total} diverse tasks. Each task has an instruction, an optional input, and the output a capable assistant would give. A language model will be asked to do these tasks, and we will judge how well it does.

Guidelines:
1. Vary the tasks: open-ended generation, classification, editing, brainstorming, reasoning, math, coding, advice, and more.
2. Vary the wording as well: do not start every instruction with the same verb. Questions and imperatives are both fine.
3. Write the instructions in English, one or two sentences each.
4. Every task must be possible for a model that only reads and writes text: nothing that needs seeing or making pictures or sound, opening files or web pages, or acting in the world.
5. When the task needs material to work on (a passage, a list, a snippet of code, a question), put it in the input, in under 100 words. Otherwise write {no_input} as the input.
6. The output must be a correct, complete answer to the instruction and its input, in under 100 words.

List of {total} tasks:
"""


def format_task(number: int, task: Task) -> str:
    """Returns one task in the numbered layout of the prompt, closed by a `###` line."""
    return (
        f"{number}. Instruction: {task.instruction}\n{number}. Input:\n{task.input or NO_INPUT}\n"
        f"{number}. Output:\n{task.output}\n###\n"
    )


def build_prompt(examples: list[Task], tasks_per_prompt: int) -> str:
    """Returns the prompt: the guidelines, the examples numbered from 1, then the next number's open header."""
    body = "".join(format_task(i, t) for i, t in enumerate(examples, 1))
    return PREAMBLE.format(total=tasks_per_prompt, no_input=NO_INPUT) + "###\n" + body + f"{len(examples) + 1}. Instruction:"


def sample_examples(rng: np.random.Generator, seeds: list[Task], machine: list[Task], cfg: SelfInstructConfig) -> list[Task]:
    """Returns the tasks shown in one prompt: sampled seeds, then sampled machine tasks when there are enough."""
    n_machine = cfg.prompt_machine if len(machine) >= cfg.prompt_machine else 0
    picked = [seeds[i] for i in rng.choice(len(seeds), min(cfg.prompt_seeds, len(seeds)), replace=False)]
    return picked + [machine[i] for i in rng.choice(len(machine), n_machine, replace=False)]


# ---------------------------------------------------------------- parse


_HEADER = re.compile(r"^[ \t]*(?:\d+[ \t]*[.)][ \t]*)?(instruction|input|output)[ \t]*:[ \t]*", re.I | re.M)
_SEPARATOR = re.compile(r"^[ \t]*###[ \t]*$", re.M)


def parse_tasks(text: str, first_number: int) -> list[Task | None]:
    """Returns the task blocks of a completion in order: a Task, or None for a malformed block.

    The completion continues the prompt's open `N. Instruction:` header, so that header is
    put back in front unless the text starts with a header of its own (a chat model's
    reply). A block is malformed when its instruction or output is missing or empty or a
    field appears twice.
    """
    if not _HEADER.match(text.lstrip()):
        text = f"{first_number}. Instruction:" + text
    heads = list(_HEADER.finditer(text))
    blocks: list[dict[str, str] | None] = []
    for k, m in enumerate(heads):
        field = m.group(1).lower()
        value = text[m.end() : heads[k + 1].start() if k + 1 < len(heads) else len(text)]
        value = _SEPARATOR.split(value, 1)[0].strip()  # what follows a ### line is between tasks
        if field == "instruction":
            blocks.append({"instruction": value})
        elif blocks and blocks[-1] is not None and field not in blocks[-1]:
            blocks[-1][field] = value
        elif blocks:
            blocks[-1] = None  # a field twice: the fields can no longer be told apart
    tasks: list[Task | None] = []
    for b in blocks:
        if b is None or not b["instruction"] or not b.get("output"):
            tasks.append(None)
        else:
            extra = b.get("input", "")
            tasks.append(Task(b["instruction"], "" if extra.lower() in (NO_INPUT, "<no input>") else extra, b["output"]))
    return tasks


# ---------------------------------------------------------------- filters


# Tasks a text-only model cannot do: seeing or making pictures and sound, opening files, going places.
BLOCKED = ("image", "images", "graph", "graphs", "picture", "pictures", "photo", "photos", "file", "files", "map", "maps",
           "draw", "drawing", "plot", "go to", "video", "videos", "audio", "music", "flowchart", "diagram")
_BLOCKED = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in BLOCKED) + r")\b", re.I)


def format_reason(task: Task, min_words: int = 3, max_words: int = 150) -> str | None:
    """Returns why a task fails the format filters (too_short, too_long, blocked_word, punctuation_start, non_english_start), or None."""
    words = len(task.instruction.split())
    if words < min_words:
        return "too_short"
    if words > max_words:
        return "too_long"
    if _BLOCKED.search(task.instruction):
        return "blocked_word"
    first = task.instruction[0]
    if first in string.punctuation:
        return "punctuation_start"
    if not first.isascii():
        return "non_english_start"
    return None


def normalized(instruction: str) -> str:
    """Returns the instruction as compared for exact duplicates: lowercased, whitespace collapsed."""
    return " ".join(instruction.lower().split())


# ---------------------------------------------------------------- the run


def self_instruct(seeds: list[Task], complete: Complete, output: str | Path, cfg: SelfInstructConfig, log=print) -> dict:
    """Returns the summary {"generated", "kept", "removed": {reason: n}, "batches"} after filling `output` to cfg.num_tasks.

    Resumable: tasks already in `output` join the pool and count toward the target, and the
    counts and the batch number (which seeds the sampling of examples) come from the
    progress file beside it.
    """
    if cfg.num_tasks < 1 or cfg.prompts_per_batch < 1 or cfg.prompt_seeds < 1:
        raise MaxlmError("--num-tasks, --batch-size and --prompt-seeds must be >= 1")
    if not 0.0 < cfg.rouge_threshold <= 1.0:
        raise MaxlmError(f"--rouge-threshold must be in (0, 1], got {cfg.rouge_threshold}")
    out = JsonlOutput(output, log)
    machine = [_kept_task(r, f"{output}:{i}") for i, r in enumerate(out.records, 1)]
    pool = RougePool([t.instruction for t in seeds + machine])
    seen = {normalized(t) for t in pool.texts}
    progress = read_progress(output)
    batch = progress.get("batches", 0)
    removed = Counter(progress.get("removed", {}))
    generated = progress.get("generated", 0)
    if machine:
        log(f"resuming: {len(machine)} tasks already in {output} (batch {batch})")
    idle = 0
    while len(machine) < cfg.num_tasks and idle < cfg.patience:
        rng = np.random.default_rng([cfg.seed, batch])
        shown = [sample_examples(rng, seeds, machine, cfg) for _ in range(cfg.prompts_per_batch)]
        texts = complete([build_prompt(ex, cfg.tasks_per_prompt) for ex in shown])
        new: list[dict] = []
        for ex, text in zip(shown, texts):
            if len(machine) + len(new) >= cfg.num_tasks:
                break  # completions past the target are not examined, nor counted
            blocks = parse_tasks(text, len(ex) + 1)
            if was_truncated(text) and blocks:
                blocks.pop()  # the token budget ran out inside the last task
                removed["truncated"] += 1
                generated += 1
            for task in blocks:
                if len(machine) + len(new) >= cfg.num_tasks:
                    break
                generated += 1
                reason, score, nearest = ("malformed", 0.0, "") if task is None else _check(task, pool, seen, cfg)
                if reason:
                    removed[reason] += 1
                    continue
                pool.add(task.instruction)
                seen.add(normalized(task.instruction))
                new.append({"id": f"self_instruct_{len(machine) + len(new):06d}", "instruction": task.instruction,
                            "input": task.input, "output": task.output, "most_similar": nearest, "rouge_l": round(score, 4)})
        out.append(new)
        machine += [Task(r["instruction"], r["input"], r["output"]) for r in new]
        batch += 1
        idle = 0 if new else idle + 1
        write_progress(output, {"batches": batch, "generated": generated, "kept": len(machine), "removed": dict(+removed)})
        log(f"batch {batch}: kept {len(new)} new, {len(machine)}/{cfg.num_tasks} tasks; {generated} generated so far")
    if len(machine) < cfg.num_tasks:
        log(f"stopping: {cfg.patience} batches in a row kept no task (is the model able to follow the prompt?)")
    return {"generated": generated, "kept": len(machine), "removed": dict(sorted((+removed).items())), "batches": batch}


def _check(task: Task, pool: RougePool, seen: set[str], cfg: SelfInstructConfig) -> tuple[str | None, float, str]:
    """Returns (removal reason or None, the highest ROUGE-L to the pool, that pool instruction)."""
    reason = format_reason(task, cfg.min_words, cfg.max_words)
    if reason:
        return reason, 0.0, ""
    if normalized(task.instruction) in seen:
        return "duplicate", 1.0, task.instruction
    score, i = pool.best(task.instruction)
    nearest = pool.texts[i] if i >= 0 else ""
    return ("similar" if score >= cfg.rouge_threshold else None), score, nearest


def _kept_task(record: dict, where: str) -> Task:
    if not all(isinstance(record.get(k), str) for k in ("instruction", "input", "output")):
        raise MaxlmError(f"{where}: not a self-instruct record (expected string 'instruction', 'input', 'output')")
    return Task(record["instruction"], record["input"], record["output"])
