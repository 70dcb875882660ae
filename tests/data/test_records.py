"""Post-training records: every task's shapes, errors named file:line, files of every kind, and
the adapters on the real shared sets (gsm8k, GPTeacher, Alpaca seeds, hh-rlhf)."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from maxlm.data.records import Chat, Pair, Prompt, normalize, read_records, split_hh_rlhf
from maxlm.errors import MaxlmError

WHERE = "train.jsonl:7"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_sft_shapes_become_messages():
    (chat,) = normalize("sft", {"prompt": "Hi?", "response": "Hello.", "id": 3}, WHERE)
    assert chat == Chat([user("Hi?"), assistant("Hello.")], WHERE)
    messages = [{"role": "system", "content": "Be brief."}, user("a"), assistant("b"), user("c"), assistant("d")]
    assert normalize("sft", {"messages": messages})[0].messages == messages


@pytest.mark.parametrize("record, error", [
    ({"prompt": "Hi", "response": "  "}, "empty response"),
    ({"messages": [user("a"), assistant(""), user("b"), assistant("c")]}, "empty response in messages[1]"),
    ({"messages": [user("a")]}, "the last message must be the assistant's, got 'user'"),
    ({"messages": [user("a"), {"role": "bot", "content": "b"}]}, "messages[1]: role must be one of system, user, assistant, got 'bot'"),
    ({"messages": [user("a"), {"role": "system", "content": "s"}, assistant("b")]}, "messages[1]: a system message may only come first"),
    ({"messages": [user("a"), {"role": "assistant", "content": 5}]}, "messages[1]: 'content' must be a string, got int"),
    ({"messages": []}, "'messages' must be a non-empty list of {'role', 'content'} objects"),
    ({"text": "pretraining text"}, "expected 'messages', or 'prompt' and 'response' (keys: 'text')"),
    ([1, 2], "expected a JSON object, got list"),
])
def test_sft_errors_name_the_record(record, error):
    with pytest.raises(MaxlmError) as e:
        normalize("sft", record, WHERE)
    assert str(e.value) == f"{WHERE}: {error}"


def test_preference_pairs_and_ranked_lists():
    (pair,) = normalize("rm", {"prompt": "Q", "chosen": "good", "rejected": "bad", "margin": 2}, WHERE)
    assert pair == Pair([user("Q")], "good", "bad", 2.0, WHERE)
    prompt = [{"role": "system", "content": "S"}, user("Q1"), assistant("A1"), user("Q2")]
    assert normalize("dpo", {"prompt": prompt, "chosen": "x", "rejected": "y"})[0].prompt == prompt
    # Ranking lists response indices best first; every ordered pair of 4 responses: 6 pairs.
    pairs = normalize("rm", {"prompt": "Q", "responses": ["r0", "r1", "r2", "r3"], "ranking": [2, 0, 3, 1]})
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("r2", "r0"), ("r2", "r3"), ("r2", "r1"), ("r0", "r3"), ("r0", "r1"), ("r3", "r1")]


@pytest.mark.parametrize("task, record, error", [
    ("rm", {"prompt": "Q", "chosen": "same", "rejected": "same"}, "chosen and rejected are identical"),
    ("dpo", {"prompt": "Q", "chosen": "", "rejected": "b"}, "empty chosen response"),
    ("rm", {"prompt": "Q", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]},
     "chosen and rejected are identical (responses[0] and responses[2])"),
    ("rm", {"prompt": "Q", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]},
     "'ranking' must list the indices of 'responses', best first: a permutation of range(3); got [0, 0, 2]"),
    ("rm", {"prompt": "Q", "responses": ["a", "b"]},
     "'ranking' must list the indices of 'responses', best first: a permutation of range(2); got None"),
    ("rm", {"prompt": "Q", "responses": ["a"], "ranking": [0]}, "'responses' must be a list of at least 2 strings"),
    ("rm", {"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "big"}, "'margin' must be a finite number, got 'big'"),
    ("dpo", {"prompt": "Q", "responses": ["a", "b"], "ranking": [1, 0]}, "ranked lists ('responses', 'ranking') are for rm"),
    ("dpo", {"prompt": [user("Q"), assistant("A")], "chosen": "a", "rejected": "b"},
     "the prompt's last message must be the user's, got 'assistant'"),
    ("dpo", {"chosen": "a", "rejected": "b", "prompt": ""}, "empty prompt"),
])
def test_preference_errors_name_the_record(task, record, error):
    with pytest.raises(MaxlmError) as e:
        normalize(task, record, WHERE)
    assert str(e.value).startswith(f"{WHERE}: {error}")


def test_rl_prompts():
    assert normalize("grpo", {"prompt": "2+2?", "answer": "4"}, WHERE) == [Prompt([user("2+2?")], "4", WHERE)]
    assert normalize("ppo", {"prompt": "Say hi.", "answer": None})[0].answer is None
    with pytest.raises(MaxlmError, match=f"^{WHERE}: 'answer' must be a string, got int"):
        normalize("ppo", {"prompt": "2+2?", "answer": 4}, WHERE)
    with pytest.raises(MaxlmError, match=f"^{WHERE}: missing key 'prompt'"):
        normalize("grpo", {"question_text": "2+2?"}, WHERE)


def test_bad_choices_are_named(tmp_path):
    with pytest.raises(MaxlmError, match="task must be one of sft, rm, dpo, ppo, grpo"):
        normalize("pretrain", {})
    with pytest.raises(MaxlmError, match="adapter must be one of auto, native, gsm8k, alpaca, hh_rlhf"):
        normalize("sft", {}, adapter="sharegpt")
    with pytest.raises(MaxlmError, match="data.on_bad_record must be error or skip"):
        read_records(_write_lines(tmp_path / "a.jsonl", ['{"prompt": "p", "response": "r"}']), "sft", on_bad_record="ignore")


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_files_stop_or_skip_on_bad_records(tmp_path):
    path = _write_lines(tmp_path / "rm.jsonl", [
        json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}),
        "",  # blank lines are not records
        json.dumps({"prompt": "Q", "chosen": "a", "rejected": "a"}),
        "{not json",
        json.dumps({"prompt": "Q", "responses": ["a", "b", "c"], "ranking": [2, 1, 0]}),
    ])
    with pytest.raises(MaxlmError) as e:
        read_records(path, "rm")
    assert str(e.value).startswith(f"{path}:3: chosen and rejected are identical")
    assert "data.on_bad_record=skip" in str(e.value)
    records, skipped = read_records(path, "rm", on_bad_record="skip")
    assert skipped == 2 and len(records) == 1 + 3
    assert [r.where for r in records] == [f"{path}:1"] + [f"{path}:5"] * 3
    empty = _write_lines(tmp_path / "empty.jsonl", ["{not json"])
    with pytest.raises(MaxlmError, match=r"empty.jsonl: no sft records \(1 bad records skipped\)"):
        read_records(empty, "sft", on_bad_record="skip")


def test_rows_count_raw_records_bad_ones_included_across_a_glob(tmp_path):
    good = lambda i: json.dumps({"prompt": f"Q{i}", "chosen": "a", "rejected": "b"})
    _write_lines(tmp_path / "a.jsonl", [good(0), "{not json", good(2)])
    _write_lines(tmp_path / "b.jsonl", [good(3), json.dumps({"prompt": "Q", "chosen": "a", "rejected": "a"}), good(5)])
    glob = str(tmp_path / "*.jsonl")
    prompts = lambda records: [r.prompt[0]["content"] for r in records]
    records, skipped = read_records(glob, "rm", "skip", rows="0:3")  # a split does not move with the bad record in it
    assert (prompts(records), skipped) == (["Q0", "Q2"], 1)
    records, skipped = read_records(glob, "rm", "skip", rows="2:")
    assert (prompts(records), skipped) == (["Q2", "Q3", "Q5"], 1)
    assert prompts(read_records(glob, "rm", "error", rows="5:")[0]) == ["Q5"]  # the bad lines are outside
    assert prompts(read_records(glob, "rm", "skip", rows="-2:")[0]) == ["Q5"]
    with pytest.raises(MaxlmError, match=r"rows '6:' selects none of its 6 records"):
        read_records(glob, "rm", "skip", rows="6:")


def test_gzip_json_array_and_parquet_files(tmp_path):
    rows = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]
    gz = tmp_path / "sft.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    array = tmp_path / "sft.json"
    array.write_text(json.dumps(rows + [{"prompt": "p3", "response": ""}], indent=2), encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sft.parquet")
    want = [[user("p1"), assistant("r1")], [user("p2"), assistant("r2")]]
    for path in (gz, tmp_path / "sft.parquet"):
        assert [r.messages for r in read_records(str(path), "sft")[0]] == want
    # A JSON array's records are named by the line each element starts on (indent=2: 4 lines each).
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(array))}:10: empty response"):
        read_records(str(array), "sft")
    records, skipped = read_records(str(array), "sft", on_bad_record="skip")
    assert [r.messages for r in records] == want and skipped == 1
    assert [r.where for r in records] == [f"{array}:2", f"{array}:6"]
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"prompt": "p", "response": "r"},\n {"prompt": oops}\n]', encoding="utf-8")
    with pytest.raises(MaxlmError, match=r"broken.json:3: invalid JSON: Expecting value"):
        read_records(str(broken), "sft", on_bad_record="skip")  # an array cannot resume past a broken element
    records, skipped = read_records(str(tmp_path / "sft.*"), "sft", on_bad_record="skip")  # a glob: every file
    assert (len(records), skipped) == (2 + 2 + 2, 1)


def test_adapters_are_picked_by_keys_or_by_name():
    gsm = {"question": "How many?", "answer": "Half of 2,400 is <<2400/2=1200>>1200.\n#### 1,200"}
    assert normalize("sft", gsm)[0].messages == [user("How many?"), assistant(gsm["answer"])]
    assert normalize("grpo", gsm, WHERE)[0] == Prompt([user("How many?")], "1200", WHERE)
    with pytest.raises(MaxlmError, match="gsm8k records hold no preference pair; use them for sft, ppo or grpo, not dpo"):
        normalize("dpo", gsm)
    with pytest.raises(MaxlmError, match="expected 'messages', or 'prompt' and 'response'"):
        normalize("sft", gsm, adapter="native")
    with pytest.raises(MaxlmError, match="missing key 'question'"):
        normalize("sft", {"prompt": "p", "response": "r"}, adapter="gsm8k")
    alpaca = {"instruction": "Translate.", "input": "chat", "output": "cat"}
    assert normalize("sft", alpaca)[0].messages == [user("Translate.\n\nchat"), assistant("cat")]
    assert normalize("sft", dict(alpaca, input=""))[0].messages[0] == user("Translate.")
    assert normalize("ppo", alpaca, WHERE)[0] == Prompt([user("Translate.\n\nchat")], None, WHERE)


def test_hh_rlhf_split():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant: A pun."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant:  No."
    assert split_hh_rlhf(chosen, rejected) == ([user("Hi"), assistant("Hello."), user("Joke?")], "A pun.", "No.")
    (pair,) = normalize("dpo", {"chosen": chosen, "rejected": rejected})
    assert (pair.prompt[-1], pair.chosen, pair.rejected) == (user("Joke?"), "A pun.", "No.")
    assert normalize("sft", {"chosen": chosen, "rejected": rejected})[0].messages[-1] == assistant("A pun.")
    with pytest.raises(MaxlmError, match=f"^{WHERE}: hh-rlhf: chosen and rejected do not share the dialogue"):
        normalize("rm", {"chosen": chosen, "rejected": "\n\nHuman: Bye\n\nAssistant: No."}, WHERE)


# ---------------------------------------------------------------- the real shared sets


def test_gsm8k(shared_data):
    path = str(shared_data / "sft" / "gsm8k_train.jsonl")
    chats, skipped = read_records(path, "sft")
    with open(path, encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    assert skipped == 0 and len(chats) == len(raw) == 7473
    assert chats[0].messages == [user(raw[0]["question"]), assistant(raw[0]["answer"])]
    prompts, _ = read_records(path, "grpo")
    assert prompts[0].answer == "72" and prompts[0].prompt == [user(raw[0]["question"])]
    assert all(re.fullmatch(r"-?\d+", p.answer) for p in prompts)  # commas gone, e.g. "1,000" -> "1000"
    assert sum("," in r["answer"].rsplit("####")[1] for r in raw) == 79  # the figure the comma rule covers
    with pytest.raises(MaxlmError, match=f"^{re.escape(path)}:1: gsm8k records hold no preference pair"):
        read_records(path, "rm")


def test_gpteacher_json_array(shared_data):
    path = shared_data / "sft" / "gpteacher_roleplay.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    chats, skipped = read_records(str(path), "sft")
    assert skipped == 0 and len(chats) == len(raw) == 3146
    with_input = next(i for i, r in enumerate(raw) if r["input"].strip())
    assert chats[with_input].messages == [user(raw[with_input]["instruction"] + "\n\n" + raw[with_input]["input"]),
                                          assistant(raw[with_input]["output"])]
    # Each element of this pretty-printed array starts on a line "  {": the lines records are named by.
    starts = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line == "  {"]
    assert [c.where for c in chats] == [f"{path}:{n}" for n in starts]


def test_alpaca_seed_tasks(shared_data):
    path = shared_data / "sft" / "alpaca_seed_tasks.jsonl"
    with open(path, encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    chats, _ = read_records(str(path), "sft")
    assert len(chats) == sum(len(r["instances"]) for r in raw) == 175
    task, chat = next((r, c) for r, c in zip(raw, chats) if r["instances"][0]["input"])
    assert chat.messages == [user(task["instruction"] + "\n\n" + task["instances"][0]["input"]),
                             assistant(task["instances"][0]["output"])]


def test_hh_rlhf_harmless(shared_data):
    path = str(shared_data / "preference" / "hh_rlhf_harmless_part1.jsonl.gz")
    # 1,500 rows: 1,495 split cleanly; rows 87, 517, 926, 1104 have an empty chosen reply and
    # row 1255's chosen dialogue runs on past a reply its rejected one ends with.
    with pytest.raises(MaxlmError, match=f"^{re.escape(path)}:87: empty chosen response"):
        read_records(path, "rm")
    pairs, skipped = read_records(path, "rm", on_bad_record="skip")
    assert (len(pairs), skipped) == (1495, 5)
    bad = sorted({f"{path}:{n}" for n in range(1, 1501)} - {p.where for p in pairs}, key=lambda w: int(w.rsplit(":", 1)[1]))
    assert bad == [f"{path}:{n}" for n in (87, 517, 926, 1104, 1255)]
    train, held = (read_records(path, "rm", "skip", rows=r) for r in ("0:1200", "1200:"))
    assert (len(train[0]), train[1], len(held[0]), held[1]) == (1196, 4, 299, 1)
    assert int(held[0][0].where.rsplit(":", 1)[1]) == 1201  # the held-out part starts at line 1201 whatever is bad before it
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    with pytest.raises(MaxlmError, match="do not share the dialogue"):
        normalize("dpo", rows[1254], f"{path}:1255")
    first = pairs[0]
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert first.prompt[0] == user("what are some pranks with a pen i can do?")
    assert first.chosen.startswith("No, sorry!") and first.rejected.startswith("There are lots of funny things")
    for p, row in zip(pairs[:50], rows):  # the split loses nothing: prompt + reply rebuilds each dialogue
        turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in p.prompt)
        assert re.sub(r"\s+", " ", turns + "\n\nAssistant: " + p.chosen) == re.sub(r"\s+", " ", row["chosen"])
    prompts, skipped = read_records(path, "ppo", on_bad_record="skip")
    assert (len(prompts), skipped) == (1499, 1)  # an empty reply does not spoil the prompt
