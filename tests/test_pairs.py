"""Pair records for `rlaif label`: one test per input shape, HH-RLHF dialogues, and each error."""

from __future__ import annotations

import json
import re

import pytest
from conftest import DATA

from rlaif.plumbing.errors import UserError
from rlaif.plumbing.files import content_id, parse_jsonl, read_jsonl
from rlaif.plumbing.pairs import PairRecord, parse_hh_dialogue, parse_pair_records

USER_Q = [{"role": "user", "content": "What is the capital of France?"}]


def parse(*rows: dict) -> list[PairRecord]:
    data = "\n".join(json.dumps(row) for row in rows).encode()
    return parse_pair_records("in.jsonl", parse_jsonl("in.jsonl", data))


def fails(message: str, *rows: dict) -> None:
    """Parsing `rows` raises exactly `message` (which starts with "in.jsonl:LINE: ")."""
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        parse(*rows)


def hh(*turns: str) -> str:
    speakers = ["Human", "Assistant"] * len(turns)
    return "".join(f"\n\n{s}: {t}" for s, t in zip(speakers, turns, strict=False))


def test_responses_shape():
    a, b = parse(
        {"id": "p1", "prompt": "What is the capital of France?", "responses": ["Paris.", "Lyon."]},
        {
            "id": 7,
            "prompt": USER_Q,
            "responses": ["Paris.", [{"role": "assistant", "content": "Lyon."}]],
            "preferred": 1,
        },
    )
    assert a == PairRecord("p1", USER_Q, ("Paris.", "Lyon."), None, "responses", 1)
    assert b == PairRecord("7", USER_Q, ("Paris.", "Lyon."), 1, "responses", 2)


def test_explicit_shape_in_trl_conversational_form():
    [r] = parse(
        {
            "prompt": "What is the capital of France?",
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": "Lyon.",
        }
    )
    assert (r.prompt, r.responses, r.reference, r.source) == (
        USER_Q,
        ("Paris.", "Lyon."),
        0,
        "explicit",
    )
    assert r.id == content_id({"prompt": USER_Q, "responses": ["Paris.", "Lyon."]})


def test_generate_output_rows_are_detected():
    row = {  # the fields `rlaif generate` writes (see generate._output_row)
        "id": "g1",
        "prompt": USER_Q,
        "initial_response": "Lyon, I think.",
        "revisions": [{"round": 1, "principle_id": "p", "critique": "c", "revision": "Paris."}],
        "final_response": "Paris.",
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Lyon, I think."}],
        "messages": [*USER_Q, {"role": "assistant", "content": "Paris."}],
    }
    [r] = parse(row)
    assert r == PairRecord("g1", USER_Q, ("Paris.", "Lyon, I think."), 0, "generate", 1)


def test_implicit_text_prefix_is_cut_at_whitespace():
    [r] = parse({"chosen": "Q: Is it safe?\nA: yes, mostly", "rejected": "Q: Is it safe?\nA: yeah"})
    # The common prefix ends inside "ye"; the prompt stops at the last whitespace before it.
    assert r.prompt == [{"role": "user", "content": "Q: Is it safe?\nA:"}]
    assert (r.responses, r.reference, r.source) == (("yes, mostly", "yeah"), 0, "implicit")


def test_implicit_conversational_shape():
    chat = [{"role": "system", "content": "Be brief."}, *USER_Q]
    [r] = parse(
        {
            "chosen": [*chat, {"role": "assistant", "content": "Paris."}],
            "rejected": [*chat, {"role": "assistant", "content": "Lyon."}],
        }
    )
    assert (r.prompt, r.responses, r.reference, r.source) == (
        chat,
        ("Paris.", "Lyon."),
        0,
        "implicit",
    )


def test_hh_shape():
    [r] = parse(
        {
            "chosen": hh("Hi", "Hello!", "How do I pick a lock?", "I can't help with that."),
            "rejected": hh("Hi", "Hello!", "How do I pick a lock?", "Use a tension wrench."),
        }
    )
    assert r.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How do I pick a lock?"},
    ]
    assert (r.responses, r.reference, r.source) == (
        ("I can't help with that.", "Use a tension wrench."),
        0,
        "hh",
    )


def test_parse_hh_dialogue_multi_turn():
    text = (
        "\n\nHuman: Write a line of a play.  "
        "\n\nAssistant: Human: Who goes there?\nGuard: A friend."
        "\n\nHuman: Another, please\n\nAssistant:  Sure:\n\nKing: Enough!\n\nHuman: Thanks"
        "\n\nAssistant:"
    )
    # "Human:" without the blank line before it is part of a turn, not a new one.
    assert parse_hh_dialogue(text) == [
        {"role": "user", "content": "Write a line of a play."},
        {"role": "assistant", "content": "Human: Who goes there?\nGuard: A friend."},
        {"role": "user", "content": "Another, please"},
        {"role": "assistant", "content": "Sure:\n\nKing: Enough!"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": ""},
    ]


def test_parse_hh_dialogue_rejects_other_text():
    with pytest.raises(ValueError, match="must start with"):
        parse_hh_dialogue("Human: hi\n\nAssistant: hello")
    with pytest.raises(ValueError, match="must start with"):
        parse_hh_dialogue("Preamble\n\nHuman: hi\n\nAssistant: hello")
    with pytest.raises(ValueError, match="turn #2 is 'Human:'"):
        parse_hh_dialogue("\n\nHuman: hi\n\nHuman: again\n\nAssistant: hello")


def test_sixty_four_hh_rlhf_pairs_parse():
    path = str(DATA / "hh-harmless-64.jsonl")
    rows, _ = read_jsonl(path)
    records = parse_pair_records(path, rows)
    assert len(records) == 64 and [r.line for r in records] == list(range(1, 65))
    for r in records:
        assert (r.source, r.reference) == ("hh", 0)
        assert r.prompt[0]["role"] == "user" and r.prompt[-1]["role"] == "user"
        assert all(text.strip() and "\n\nHuman:" not in text for text in r.responses)
    assert len({r.id for r in records}) == 64
    assert records[1].prompt == [{"role": "user", "content": "Is it possible to download a car?"}]
    assert records[1].responses == (
        "I’m not sure what you mean. Can you clarify?",
        "I’m sorry, I don’t understand.",
    )
    assert max(len(r.prompt) for r in records) > 1  # multi-turn dialogues are among them


def test_row_without_a_pair_is_rejected():
    fails(
        'in.jsonl:2: no pair of responses found; expected {"prompt", "responses": [a, b]},'
        ' {"prompt", "chosen", "rejected"}, or {"chosen", "rejected"} sharing a prompt prefix'
        " (e.g. HH-RLHF dialogues)",
        {"prompt": "Q?", "responses": ["a", "b"]},
        {"prompt": "Q?", "response": "a"},
    )
    fails(
        "in.jsonl:1: 'chosen' and 'rejected' come together: 'rejected' is missing",
        {"prompt": "Q?", "chosen": "a"},
    )
    fails(
        'in.jsonl:1: \'responses[1]\' must be text or a list of one {"role": "assistant"} message',
        {"prompt": "Q?", "responses": ["a", [{"role": "user", "content": "b"}]]},
    )
    fails(
        "in.jsonl:1: 'preferred' must be 0 or 1: the index of the better response",
        {"prompt": "Q?", "responses": ["a", "b"], "preferred": True},
    )


MORE_NEEDS_RATING = (
    " (more than two: only `rlaif label --method rating` takes them, keeping the best and the"
    " worst)"
)


@pytest.mark.parametrize(
    ("responses", "got"), [(["a", "b", "c"], "3" + MORE_NEEDS_RATING), (["a"], "1"), ("a", "str")]
)
def test_wrong_number_of_responses(responses, got):
    fails(
        f"in.jsonl:1: 'responses' must be a list of exactly two responses, got {got}",
        {"prompt": "Q?", "responses": responses},
    )


def test_identical_responses_are_flagged_not_rejected():
    rows = [
        (1, {"prompt": "Q?", "responses": ["Paris.", "Paris. "]}),
        (2, {"chosen": hh("Q?", "Paris."), "rejected": hh("Q?", "Paris.")}),
        (3, {"prompt": "Q?", "responses": ["Paris.", "Lyon."]}),
    ]
    assert [r.identical for r in parse_pair_records("in.jsonl", rows)] == [True, True, False]
    # Without a prompt, identical texts leave nothing to split a prompt from.
    fails(
        "in.jsonl:1: the two responses are identical: nothing to judge",
        {"chosen": "Q? Paris.", "rejected": "Q? Paris."},
    )


def test_an_empty_reply_is_a_pair_to_judge():
    """HH-RLHF has them (people sometimes preferred saying nothing); a judge can compare them."""
    rows = [
        (1, {"chosen": hh("Q?", "Paris."), "rejected": hh("Q?", "")}),
        (2, {"prompt": "Q?", "responses": ["", "Lyon."]}),
        (3, {"prompt": "Q?", "responses": ["", " "]}),
    ]
    records = parse_pair_records("in.jsonl", rows)
    assert [r.responses for r in records[:2]] == [("Paris.", ""), ("", "Lyon.")]
    assert [r.identical for r in records] == [False, False, True]


def test_hh_text_without_its_leading_blank_line_is_hh():
    record = parse_pair_records(
        "in.jsonl",
        [(1, {"chosen": "Human: Q?\n\nAssistant: A.", "rejected": "Human: Q?\n\nAssistant: B."})],
    )[0]
    assert record.source == "hh" and record.prompt == [{"role": "user", "content": "Q?"}]
    with pytest.raises(
        UserError, match=r"^in.jsonl:1: the chosen and rejected HH dialogues differ"
    ):
        parse({"chosen": "Human: Q?\n\nAssistant: A.", "rejected": "Human: Hi?\n\nAssistant: B."})


def test_a_shared_speaker_label_is_no_shared_prompt():
    with pytest.raises(UserError, match=r"^in.jsonl:1: 'chosen' and 'rejected' share no prompt"):
        parse({"chosen": "Human: how do I bake bread?", "rejected": "Human: tell me a joke"})


def test_mismatched_hh_prefixes_are_rejected():
    fails(
        "in.jsonl:1: the chosen and rejected HH dialogues differ at turn #3, before their final"
        " assistant turn; both must share the same prompt",
        {"chosen": hh("Hi", "Hello!", "Q?", "A."), "rejected": hh("Hi", "Hello!", "Q2?", "B.")},
    )


def test_duplicate_ids_are_rejected():
    fails(
        "in.jsonl:3: duplicate id 'x' (first on line 1); ids must be unique"
        " (rows without 'id' get one from their content)",
        {"id": "x", "prompt": "Q?", "responses": ["a", "b"]},
        {"id": "y", "prompt": "Q?", "responses": ["a", "b"]},
        {"id": "x", "prompt": "Q2?", "responses": ["c", "d"]},
    )
    same = {"prompt": "Q?", "responses": ["a", "b"]}
    rid = content_id({"prompt": [{"role": "user", "content": "Q?"}], "responses": ["a", "b"]})
    fails(
        f"in.jsonl:2: duplicate id '{rid}' (first on line 1); ids must be unique"
        " (rows without 'id' get one from their content)",
        same,
        same,
    )


def test_other_scalar_fields_are_carried_for_grouping(tmp_path):
    path = tmp_path / "x.jsonl"
    row = {
        "prompt": "q",
        "chosen": "a",
        "rejected": "b",
        "unsafe": True,
        "type": "homonyms",
        "tags": ["x"],
        "initial_response": "b",
    }
    path.write_text(json.dumps(row) + "\n")
    (record,) = parse_pair_records(str(path), read_jsonl(str(path))[0])
    assert record.fields == {"unsafe": True, "type": "homonyms"}
