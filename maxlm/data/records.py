"""Post-training records: read, validate and normalize what sft, rm, dpo, ppo and grpo train on.

Every record becomes one of three types: `Chat` (sft), `Pair` (rm, dpo) or `Prompt` (ppo,
grpo). Messages are `{"role", "content"}` dicts, as Hugging Face chat templates take them;
a prompt given as a string becomes one user message, so prompts are always message lists
that end with a user turn. Records of public sets are converted by adapters, picked by
their keys or by name: gsm8k `{"question", "answer"}`, Alpaca / GPTeacher
`{"instruction", "input", "output"}` (and Alpaca's seed tasks with `instances`), hh-rlhf
`{"chosen", "rejected"}` whole dialogues. Extra keys are ignored; a null optional value
counts as absent (parquet fills missing cells with null).

Bad records are named `file:line` (1-based; the element's first line in a JSON array,
the row in parquet) and, as with pretraining text, `data.on_bad_record` decides between
stopping and skipping with a count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from maxlm.data.sources import expand, row_slice
from maxlm.errors import MaxlmError
from maxlm.files import formats
from maxlm.files.formats import BadRecord, as_record, record_text
from maxlm.files.readers import Reader, iter_records

TASKS = ("sft", "rm", "dpo", "ppo", "grpo")
ADAPTERS = ("auto", "native", "gsm8k", "alpaca", "hh_rlhf")
ROLES = ("system", "user", "assistant")

Message = dict[str, str]


@dataclass(frozen=True)
class Chat:
    """An sft conversation; its last message is the assistant's."""

    messages: list[Message]
    where: str = ""


@dataclass(frozen=True)
class Pair:
    """A preference: two completions of one prompt, `chosen` better than `rejected`."""

    prompt: list[Message]
    chosen: str
    rejected: str
    margin: float | None = None
    where: str = ""


@dataclass(frozen=True)
class Prompt:
    """An RL prompt, with the gold answer a verifier checks when there is one."""

    prompt: list[Message]
    answer: str | None = None
    where: str = ""


Record = Chat | Pair | Prompt


# ---------------------------------------------------------------- one record


def normalize(task: str, record: object, where: str = "<record>", adapter: str = "auto") -> list[Record]:
    """Returns the normalized records of one raw record (several for ranked lists and seed tasks)."""
    _check_choices(task, adapter)
    try:
        return _normalize(task, record, adapter, where)
    except BadRecord as e:
        raise MaxlmError(f"{where}: {e}") from None


def record_kind(task: str) -> str:
    """Returns what one record of `task` is: "text" (a pretraining document), "chat", "pair" or "prompt"."""
    if task == "pretrain":
        return "text"
    _check_choices(task, "auto")
    return {"sft": "chat", "rm": "pair", "dpo": "pair"}.get(task, "prompt")


def _check_choices(task: str, adapter: str) -> None:
    if task not in TASKS:
        raise MaxlmError(f"task must be one of {', '.join(TASKS)} to read post-training records, got {task!r}")
    if adapter not in ADAPTERS:
        raise MaxlmError(f"record adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r}")


def _normalize(task: str, record: object, adapter: str, where: str) -> list[Record]:
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    if adapter == "auto":
        adapter = _detect(record)
    natives = [record] if adapter == "native" else ADAPT[adapter](task, record)
    if task == "sft":
        return [_chat(r, where) for r in natives]
    if task in ("rm", "dpo"):
        return [p for r in natives for p in _pairs(task, r, where)]
    return [_prompt_record(r, where) for r in natives]


def _detect(record: dict) -> str:
    """Returns the adapter a record's keys call for; native keys win."""
    if "messages" in record or "prompt" in record:
        return "native"
    if "question" in record and "answer" in record:
        return "gsm8k"
    if "instruction" in record:
        return "alpaca"
    if "chosen" in record and "rejected" in record:
        return "hh_rlhf"
    return "native"


def _chat(record: dict, where: str) -> Chat:
    if "messages" in record:
        messages = _messages(record["messages"], "messages")
    elif "prompt" in record and "response" in record:
        messages = _prompt(record) + [{"role": "assistant", "content": record_text(record, "response")}]
    else:
        raise BadRecord(f"expected 'messages', or 'prompt' and 'response' (keys: {_keys(record)})")
    if messages[-1]["role"] != "assistant":
        raise BadRecord(f"the last message must be the assistant's, got {messages[-1]['role']!r}")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise BadRecord("empty response" + ("" if i == len(messages) - 1 else f" in messages[{i}]"))
    return Chat(messages, where)


def _pairs(task: str, record: dict, where: str) -> list[Pair]:
    prompt = _prompt(record)
    margin = _margin(record)
    if "responses" not in record:
        chosen, rejected = record_text(record, "chosen"), record_text(record, "rejected")
        _check_pair(chosen, rejected, "")
        return [Pair(prompt, chosen, rejected, margin, where)]
    if task != "rm":
        raise BadRecord(f"ranked lists ('responses', 'ranking') are for rm; {task} records need 'chosen' and 'rejected'")
    responses = record["responses"]
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise BadRecord("'responses' must be a list of at least 2 strings")
    ranking = record.get("ranking")
    n = len(responses)
    if not isinstance(ranking, list) or any(type(i) is not int for i in ranking) or sorted(ranking) != list(range(n)):
        raise BadRecord(
            f"'ranking' must list the indices of 'responses', best first: a permutation of range({n}); got {ranking!r}"
        )
    pairs = []
    for a in range(n):  # every ordered pair: the better-ranked one is chosen
        for b in range(a + 1, n):
            i, j = ranking[a], ranking[b]
            _check_pair(responses[i], responses[j], f" (responses[{i}] and responses[{j}])")
            pairs.append(Pair(prompt, responses[i], responses[j], margin, where))
    return pairs


def _check_pair(chosen: str, rejected: str, which: str) -> None:
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise BadRecord(f"empty {name} response{which}")
    if chosen == rejected:
        raise BadRecord(f"chosen and rejected are identical{which}")


def _margin(record: dict) -> float | None:
    margin = record.get("margin")
    if margin is None:
        return None
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise BadRecord(f"'margin' must be a finite number, got {margin!r}")
    return float(margin)


def _prompt_record(record: dict, where: str) -> Prompt:
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise BadRecord(f"'answer' must be a string, got {type(answer).__name__}")
    return Prompt(_prompt(record), answer, where)


def _prompt(record: dict) -> list[Message]:
    """Returns the record's prompt as messages ending with a user turn."""
    if "prompt" not in record:
        raise BadRecord(f"missing key 'prompt' (keys: {_keys(record)})")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise BadRecord("empty prompt")
        return [{"role": "user", "content": prompt}]
    messages = _messages(prompt, "prompt")
    if messages[-1]["role"] != "user":
        raise BadRecord(f"the prompt's last message must be the user's, got {messages[-1]['role']!r}")
    return messages


def _messages(value: object, name: str) -> list[Message]:
    """Returns a validated copy of a messages list: known roles, string contents, system only first."""
    if not isinstance(value, list) or not value:
        raise BadRecord(f"{name!r} must be a non-empty list of {{'role', 'content'}} objects")
    messages = []
    for i, m in enumerate(value):
        at = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise BadRecord(f"{at} must be an object with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise BadRecord(f"{at}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if role == "system" and i > 0:
            raise BadRecord(f"{at}: a system message may only come first")
        if not isinstance(content, str):
            raise BadRecord(f"{at}: 'content' must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    return messages


def _keys(record: dict) -> str:
    return ", ".join(map(repr, list(record)[:8])) or "none"


# ---------------------------------------------------------------- adapters for public sets
# Each returns native records for the task; the task's own checks then run on them.


GSM8K_FINAL_MARK = "####"  # a gsm8k solution ends in "#### 72"


def gsm8k_final_answer(answer: str) -> str:
    """Returns the gold number of a gsm8k answer: what follows `####`, commas removed."""
    if GSM8K_FINAL_MARK not in answer:
        raise BadRecord("gsm8k 'answer' has no final '#### <number>' line")
    return answer.rsplit(GSM8K_FINAL_MARK, 1)[1].strip().replace(",", "")


def _gsm8k(task: str, record: dict) -> list[dict]:
    question, answer = record_text(record, "question"), record_text(record, "answer")
    if task == "sft":
        return [{"prompt": question, "response": answer}]
    if task in ("ppo", "grpo"):
        return [{"prompt": question, "answer": gsm8k_final_answer(answer)}]
    raise BadRecord(f"gsm8k records hold no preference pair; use them for sft, ppo or grpo, not {task}")


def _alpaca(task: str, record: dict) -> list[dict]:
    instruction = record_text(record, "instruction")
    instances = record["instances"] if "instances" in record else [record]  # seed tasks list several
    if not isinstance(instances, list) or not instances:
        raise BadRecord("'instances' must be a non-empty list of {'input', 'output'} objects")
    out = []
    for inst in instances:
        if not isinstance(inst, dict):
            raise BadRecord(f"each instance must be an object with 'input' and 'output', got {type(inst).__name__}")
        extra = inst.get("input") or ""
        if not isinstance(extra, str):
            raise BadRecord(f"'input' must be a string, got {type(extra).__name__}")
        prompt = instruction + "\n\n" + extra if extra.strip() else instruction
        if task == "sft":
            out.append({"prompt": prompt, "response": record_text(inst, "output")})
        elif task in ("ppo", "grpo"):
            out.append({"prompt": prompt})  # free-form outputs are no verifiable answer
        else:
            raise BadRecord(f"instruction records hold no preference pair; use them for sft, ppo or grpo, not {task}")
    return out


HH_REPLY = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_hh_rlhf(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """Returns (shared prompt messages, chosen reply, rejected reply) of an hh-rlhf pair of dialogues.

    The prompt is everything up to and including the last `\\n\\nAssistant:`; it must be the
    same in both dialogues. Turn texts and replies are stripped of surrounding whitespace.
    """
    cut_c, cut_r = chosen.rfind(HH_REPLY), rejected.rfind(HH_REPLY)
    if cut_c < 0 or cut_r < 0:
        raise BadRecord("hh-rlhf dialogues must contain a '\\n\\nAssistant:' turn")
    shared = chosen[: cut_c + len(HH_REPLY)]
    if rejected[: cut_r + len(HH_REPLY)] != shared:
        raise BadRecord("hh-rlhf: chosen and rejected do not share the dialogue up to their last '\\n\\nAssistant:'")
    parts = _HH_TURN.split(shared)  # ["", "Human", text, "Assistant", text, ..., "Assistant", ""]
    if parts[0].strip():
        raise BadRecord("hh-rlhf: text before the first '\\n\\nHuman:' turn")
    turns = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
             for who, text in zip(parts[1::2], parts[2::2])]
    return turns[:-1], chosen[cut_c + len(HH_REPLY):].strip(), rejected[cut_r + len(HH_REPLY):].strip()


def _hh_rlhf(task: str, record: dict) -> list[dict]:
    prompt, chosen, rejected = split_hh_rlhf(record_text(record, "chosen"), record_text(record, "rejected"))
    if task == "sft":
        return [{"messages": prompt + [{"role": "assistant", "content": chosen}]}]
    if task in ("ppo", "grpo"):
        return [{"prompt": prompt}]
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


ADAPT = {"gsm8k": _gsm8k, "alpaca": _alpaca, "hh_rlhf": _hh_rlhf}


# ---------------------------------------------------------------- files


class RecordFile(Reader):
    """The normalized records of one file (or of `items`, its raw records); bad ones stop the read or are counted (`skipped`)."""

    def __init__(self, path: str, task: str, on_bad_record: str = "error", adapter: str = "auto", items=None):
        super().__init__(path, on_bad_record)
        _check_choices(task, adapter)
        self.records: list[Record] = []
        for lineno, raw in raw_records(path) if items is None else items:
            try:
                record = as_record(raw)
                self.records.extend(_normalize(task, record, adapter, f"{path}:{lineno}"))
            except BadRecord as e:
                self._bad(lineno, str(e))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]


def read_records(path: str, task: str, on_bad_record: str = "error", adapter: str = "auto",
                 rows: str = "") -> tuple[list[Record], int]:
    """Returns (the normalized records of `rows` of a file or glob, how many bad records of them were skipped).

    `rows` ("start:stop", `sources.row_slice`) counts the raw records of the files in order, bad
    ones included, so a split names the same lines whether or not some of them are malformed and
    `skipped` counts only the bad ones it selects. Post-training sets are small next to
    pretraining corpora, so they are held in memory.
    """
    files = [(f, list(raw_records(f))) for f in expand(path)]
    total = sum(len(items) for _, items in files)
    keep = range(total)[row_slice(rows, total, path)]
    if rows and not keep:
        raise MaxlmError(f"{path}: rows {rows!r} selects none of its {total} records")
    read, offset = [], 0
    for f, items in files:
        read.append(RecordFile(f, task, on_bad_record, adapter, items[max(keep.start - offset, 0):max(keep.stop - offset, 0)]))
        offset += len(items)
    records = [r for f in read for r in f.records]
    skipped = sum(f.skipped for f in read)
    if not records:
        where = f" in rows {rows!r}" if rows else ""
        raise MaxlmError(f"{path}: no {task} records{where}" + (f" ({skipped} bad records skipped)" if skipped else ""))
    return records, skipped


def raw_records(path: str) -> Iterator[tuple[int, object]]:
    """Returns (line, record) pairs of one file (`maxlm.files.readers.iter_records`); a bad one is a BadRecord."""
    fmt, _ = formats.detect_format(path)
    if fmt not in ("jsonl", "parquet"):
        raise MaxlmError(f"{path}: post-training records are read from jsonl (.gz, .zst), json or parquet, not {fmt}")
    return iter_records(path, fmt)
