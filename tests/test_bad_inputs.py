"""Everything a user can get wrong, across the commands: one line naming the culprit, exit 2,
no traceback, and the working folder exactly as it was (nothing new, changed or removed).

Each case fails before any model is loaded (or, for the served-model cases, against a small
local fake of an OpenAI-compatible server), so the whole table runs in well under a minute.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import http.server
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlaif.cli import app

PROMPT = b'{"id": "a", "prompt": "Hello?"}\n'
SAFE_PROMPT = b'{"id": "a", "prompt": "Hello?", "unsafe": false}\n'
PAIR = b'{"id": "a", "prompt": "Q?", "responses": ["yes", "no"]}\n'
PREF = b'{"id": "a", "prompt": "Q?", "chosen": "yes", "rejected": "no"}\n'
CHAT = b'{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}]}\n'
LABELLED = json.dumps(
    {
        "id": "a",
        "prompt": [{"role": "user", "content": "Q?"}],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
        "p_chosen": 0.7,
        "p": 0.7,
        "responses": ["yes", "no"],
        "judgements": [{"principle_id": "x", "p_ab": 0.7, "p_ba": 0.7, "p": 0.7}],
        "reference": 0,
    }
).encode()
RM_CONFIG = json.dumps({"architectures": ["LlamaForSequenceClassification"]}).encode()
REWARD_MODEL = {"rm/config.json": RM_CONFIG, "rm/model.safetensors": b"\0"}
CONSTITUTION = (
    b"name: t\nversion: 1\nprinciples:\n  - {id: a, critique: c, revision: r, preference: p}\n"
)
BOMB = (
    b"name: t\nversion: 1\na: &a [x, x, x, x, x, x, x, x, x]\n"
    + b"".join(
        f"{k}: &{k} [{', '.join(['*' + p] * 9)}]\n".encode()
        for p, k in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + b"principles: *i\n"
)


@dataclass
class Case:
    argv: list[str]  # "{d}" stands for the case's working folder
    files: dict[str, bytes]
    expect: str  # a substring of the one error line (after "{d}" is filled in)
    setup: object = None  # a function of the folder, for links and such
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {}


def case(name: str, argv: str | list[str], files: dict, expect: str, **kw) -> None:
    assert name not in CASES, name
    CASES[name] = Case(argv.split() if isinstance(argv, str) else argv, files, expect, **kw)


# --- 1. input files every reading command refuses the same way ------------------------------
# command, its arguments around the input, the input's name, a valid row, other files it needs
READERS = {
    "generate": ("generate {in} -o {d}/out.jsonl --engine hf", PROMPT, {}),
    "sample": ("sample {in} -o {d}/out.jsonl --engine hf", PROMPT, {}),
    "label": ("label {in} -o {d}/out.jsonl --engine hf", PAIR, {}),
    "winrate": ("eval winrate {in} --policy p -o {d}/out.jsonl --engine hf", PROMPT, {}),
    "refusals": ("eval refusals {in} --policy p -o {d}/out.jsonl --engine hf", SAFE_PROMPT, {}),
    "sft": ("sft {in} -o {d}/model", CHAT, {}),
    "dpo": ("dpo {in} -o {d}/model", PREF, {}),
    "train-rm": ("train-rm {in} -o {d}/model", PREF, {}),
    "rl": ("rl {in} -o {d}/model --reward judge", PROMPT, {}),
    "score": ("score {in} --rm {d}/rm -o {d}/out.jsonl", PAIR, REWARD_MODEL),
    "eval-rm": ("eval rm {in} --rm {d}/rm", PREF, REWARD_MODEL),
    "agreement": ("eval agreement {in}", LABELLED + b"\n", {}),
    "judge": ("eval judge {in} --engine hf", PAIR, {}),
    "show": ("show {in}", PROMPT, {}),
}
BAD_FILES = {
    "missing": (None, "in.jsonl: no such file"),
    "folder": ("dir", "in.jsonl: is a folder"),
    "empty": (b"", "in.jsonl: empty file"),
    "blank-lines": (b"\n\n  \n", "in.jsonl: empty file"),
    "invalid-json": (b"{}\n{oops}\n", "in.jsonl:2: line contains invalid json"),
    "not-an-object": (b'"text"\n', "in.jsonl:1: expected a JSON object"),
    "not-utf8": (b'{"prompt": "caf\xe9"}\n', "in.jsonl:1: line is not valid utf-8"),
    "too-deep": (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "in.jsonl:1: JSON nested"),
}
for command, (argv, _, extra) in READERS.items():
    for problem, (content, expect) in BAD_FILES.items():
        files = dict(extra)
        if isinstance(content, bytes):
            files["in.jsonl"] = content
        elif content == "dir":
            files["in.jsonl/keep"] = b""
        case(f"{command}-{problem}", argv.replace("{in}", "{d}/in.jsonl"), files, expect)

# --- 2. prompt rows ---------------------------------------------------------------------------
BAD_PROMPTS = {
    "no-prompt": (b'{"text": "hi"}\n', "in.jsonl:1: missing field 'prompt'"),
    "prompt-number": (b'{"prompt": 42}\n', "in.jsonl:1: "),
    "prompt-empty": (b'{"prompt": "  "}\n', "in.jsonl:1: "),
    "ends-with-assistant": (
        b'{"messages": [{"role": "user", "content": "x"},'
        b' {"role": "assistant", "content": "y"}]}\n',
        "in.jsonl:1: the conversation must end with a user message",
    ),
    "bad-role": (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "in.jsonl:1: 'messages'"),
    "duplicate-id": (PROMPT + PROMPT.replace(b"Hello", b"Bye"), "in.jsonl:2: duplicate id 'a'"),
}
for command in ("generate", "sample", "winrate", "refusals", "rl"):
    for problem, (content, expect) in BAD_PROMPTS.items():
        argv = READERS[command][0].replace("{in}", "{d}/in.jsonl")
        case(f"{command}-{problem}", argv, {"in.jsonl": content}, expect)

# --- 3. pair and preference rows ----------------------------------------------------------------
BAD_PAIRS = {
    "three-responses": (
        b'{"prompt": "Q?", "responses": ["a", "b", "c"]}\n',
        "in.jsonl:1: 'responses' must be a list of exactly two",
    ),
    "chosen-alone": (b'{"prompt": "Q?", "chosen": "a"}\n', "in.jsonl:1: 'chosen' and 'rejected'"),
    "prompt-number": (
        b'{"prompt": 42, "chosen": "a", "rejected": "b"}\n',
        "in.jsonl:1: 'prompt' must be",
    ),
    "chosen-object": (
        b'{"prompt": "Q?", "chosen": {"text": "a"}, "rejected": "b"}\n',
        "in.jsonl:1: 'chosen' must be text",
    ),
    "hh-two-conversations": (
        b'{"chosen": "Human: Hi?\\n\\nAssistant: A.",'
        b' "rejected": "Human: Bye?\\n\\nAssistant: B."}\n',
        "in.jsonl:1: the chosen and rejected HH dialogues differ",
    ),
    "speaker-label-only": (
        b'{"chosen": "Human: bake bread", "rejected": "Human: tell a joke"}\n',
        "in.jsonl:1: 'chosen' and 'rejected' share no prompt",
    ),
    "no-pair": (b'{"prompt": "Q?"}\n', "in.jsonl:1: no pair of responses found"),
}
for command in ("label", "train-rm", "dpo", "score"):
    for problem, (content, expect) in BAD_PAIRS.items():
        if command == "score" and problem in ("chosen-alone", "no-pair"):
            expect = "in.jsonl:1: expected a prompt with 'response'"
        argv = READERS[command][0].replace("{in}", "{d}/in.jsonl")
        files = {"in.jsonl": content, **READERS[command][2]}
        case(f"{command}-{problem}", argv, files, expect)
case(
    "label-preferred-2",
    READERS["label"][0].replace("{in}", "{d}/in.jsonl"),
    {"in.jsonl": b'{"prompt": "Q?", "responses": ["a", "b"], "preferred": 2}\n'},
    "in.jsonl:1: 'preferred' must be 0 or 1",
)
for command in ("train-rm", "dpo"):
    argv = READERS[command][0].replace("{in}", "{d}/in.jsonl")
    case(
        f"{command}-no-preference",
        argv,
        {"in.jsonl": PAIR},
        "in.jsonl:1: no preference in this row",
    )
    case(
        f"{command}-p-out-of-range",
        argv,
        {"in.jsonl": LABELLED.replace(b'"p_chosen": 0.7', b'"p_chosen": 1.5') + b"\n"},
        "in.jsonl:1: 'p_chosen' must be a probability",
    )
    case(
        f"{command}-labelled-prompt-number",
        argv,
        {
            "in.jsonl": LABELLED.replace(
                b'"prompt": [{"role": "user", "content": "Q?"}]', b'"prompt": 42'
            )
            + b"\n"
        },
        "in.jsonl:1: 'prompt' must be",
    )
case(
    "sft-no-messages",
    "sft {d}/in.jsonl -o {d}/model",
    {"in.jsonl": PROMPT},
    "in.jsonl:1: needs 'messages'",
)
case(
    "sft-ends-with-user",
    "sft {d}/in.jsonl -o {d}/model",
    {"in.jsonl": b'{"messages": [{"role": "user", "content": "Q?"}]}\n'},
    "in.jsonl:1: 'messages' must end with the assistant's answer",
)
case(
    "eval-rm-no-reference",
    "eval rm {d}/in.jsonl --rm {d}/rm",
    {"in.jsonl": PAIR, **REWARD_MODEL},
    "in.jsonl: no pairs with a reference preference",
)
AGREEMENT_ROWS = {
    "no-judgements": (b'{"p": 0.5, "responses": ["a", "b"]}\n', "missing judgements"),
    "p-text": (LABELLED.replace(b'"p": 0.7,', b'"p": "high",', 1) + b"\n", "'p' must be"),
    "judgement-text": (
        LABELLED.replace(b'"judgements": [{', b'"judgements": ["x", {') + b"\n",
        "judgement #1 must",
    ),
}
for problem, (content, expect) in AGREEMENT_ROWS.items():
    case(f"agreement-{problem}", "eval agreement {d}/in.jsonl", {"in.jsonl": content}, expect)
case(
    "agreement-second-row-bad",
    "eval agreement {d}/in.jsonl",
    {"in.jsonl": LABELLED + b"\n" + b'{"p": 0.5, "responses": ["a", "b"]}\n'},
    "in.jsonl:2: not an `rlaif label` row",
)
# The judge card's options: checked before any file is read or model loaded.
CARD_OPTIONS = {
    "min-agreement-range": ("--min-agreement 1.5", "--min-agreement 1.5: a rate in [0, 1]"),
    "bins-zero": ("--bins 0", "--bins 0: must be at least 1"),
    "plot-stdout": ("--plot -", "--plot -: a PNG needs a file path"),
    "group-by-missing": ("--group-by nope", "--group-by nope: no row of"),
    "plot-is-json": ("--plot {d}/c --json {d}/c", "--plot and --json are the same file"),
}
for problem, (flags, expect) in CARD_OPTIONS.items():
    for command, row in (("agreement", LABELLED + b"\n"), ("judge", PAIR)):
        argv = f"eval {command} {{d}}/in.jsonl --engine hf {flags}".replace(
            " --engine hf", "" if command == "agreement" else " --engine hf"
        )
        case(f"card-{command}-{problem}", argv, {"in.jsonl": row}, expect)
case(
    "card-judge-gate-without-references",
    "eval judge {d}/in.jsonl --engine hf --min-agreement 0.5",
    {"in.jsonl": PAIR},
    "--min-agreement: ",
)
SHOW_ROWS = {
    "not-generate": (PROMPT, "not an `rlaif generate` output"),
    "revisions-text": (
        b'{"id": "a", "prompt": [{"role": "user", "content": "Q"}], "initial_response": "x",'
        b' "revisions": "none"}\n',
        "'revisions' must be a list",
    ),
    "prompt-text": (
        b'{"id": "a", "prompt": "Q", "initial_response": "x", "revisions": []}\n',
        "'prompt' must be a non-empty list",
    ),
}
for problem, (content, expect) in SHOW_ROWS.items():
    case(f"show-{problem}", "show {d}/in.jsonl", {"in.jsonl": content}, f"in.jsonl:1: {expect}")
case("show-no-such-id", "show {d}/in.jsonl --id zz", {"in.jsonl": PROMPT}, "no record with id 'zz'")

# --- 4. options ------------------------------------------------------------------------------
GEN = "generate {d}/in.jsonl -o {d}/out.jsonl --engine hf"
LAB = "label {d}/in.jsonl -o {d}/out.jsonl --engine hf"
OPTIONS = {
    "generate": (
        GEN,
        {"in.jsonl": PROMPT},
        [
            ("--rounds 0", "--rounds 0"),
            ("--temperature -1", "--temperature -1"),
            ("--top-p 0", "--top-p 0"),
            ("--max-new-tokens 0", "--max-new-tokens 0"),
            ("--chunk-size 0", "--chunk-size 0"),
            ("--batch-size 0", "--batch-size 0"),
            ("--max-model-len 0", "--max-model-len 0"),
            ("--tensor-parallel-size 0", "--tensor-parallel-size 0"),
            ("--gpu-memory-utilization 2", "--gpu-memory-utilization 2"),
            ("--engine nope", "--engine nope"),
            ("--dtype int8", "--dtype int8"),
            ("--shard 3/2", "--shard 3/2"),
            ("--shard half", "--shard half"),
            ("--rounds many", "Invalid value for '--rounds'"),
            ("--no-such-option", "No such option: --no-such-option"),
            ("--engine openai", "needs --base-url"),
            ("--engine openai --base-url ftp://x", "--base-url ftp://x"),
            (
                "--engine openai --base-url http://127.0.0.1:9/v1 --max-concurrency 0",
                "--max-concurrency 0",
            ),
            ("-c nowhere", "--constitution nowhere"),
            ("-m ./no-such-model", "./no-such-model: not a model folder"),
        ],
    ),
    "label": (
        LAB,
        {"in.jsonl": PAIR},
        [
            ("-k zero", "--principles-per-pair zero"),
            ("-k 0", "--principles-per-pair 0"),
            ("--method guess", "--method guess"),
            ("--clamp-low 0.7", "--clamp-low/--clamp-high 0.7/0.6"),
            ("--max-skipped some", "--max-skipped some"),
            ("--max-skipped 150%", "--max-skipped 150%"),
        ],
    ),
    "sample": (
        "sample {d}/in.jsonl -o {d}/out.jsonl --engine hf",
        {"in.jsonl": PROMPT},
        [
            ("--n 3", "--n 3"),
            ("--temperature 0", "--temperature 0"),
        ],
    ),
    "train-rm": (
        "train-rm {d}/in.jsonl -o {d}/model",
        {"in.jsonl": PREF},
        [
            ("--label-mode fuzzy", "--label-mode fuzzy"),
            ("--min-confidence 0.9", "--min-confidence 0.9"),
            ("--eval-fraction 1", "--eval-fraction 1"),
            ("--batch-size 0", "--batch-size and"),
            ("--lr 0", "--learning-rate 0"),
            ("--num-processes 0", "--num-processes 0"),
        ],
    ),
    "dpo": (
        "dpo {d}/in.jsonl -o {d}/model",
        {"in.jsonl": PREF},
        [
            ("--loss-type best", "--loss-type best"),
            ("--beta 0", "--beta 0"),
            ("--label-mode soft --loss-type sigmoid", "--label-mode soft fits"),
            ("--label-smoothing 0.1", "--label-smoothing 0.1 has no effect"),
        ],
    ),
    "rl": (
        "rl {d}/in.jsonl -o {d}/model",
        {"in.jsonl": PROMPT},
        [
            ("--algo ppo", "--algo ppo"),
            ("--reward {d}/no-such-rm", "no-such-rm: 'judge', a reward-model folder"),
            ("--judge-engine openai", "--judge-engine openai"),
            ("--max-length 512", "--max-length applies to --algo online-dpo"),
            ("--num-generations 1", "--num-generations: at least 2"),
            ("--batch-size 6 --num-generations 4", "--batch-size 6 must be a multiple"),
            ("--kl-coef -1", "--kl-coef >= 0"),
        ],
    ),
    "score": (
        "score {d}/in.jsonl --rm {d}/rm -o {d}/out.jsonl",
        {"in.jsonl": PAIR, **REWARD_MODEL},
        [
            ("--batch-size 0", "--batch-size 0"),
        ],
    ),
    "winrate": (
        "eval winrate {d}/in.jsonl -o {d}/out.jsonl --policy p",
        {"in.jsonl": PROMPT},
        [
            ("--temperature -1", "--temperature >= 0"),
            ("--engine openai", "--engine openai: choose one of auto, vllm, hf"),
        ],
    ),
}
for command, (argv, files, options) in OPTIONS.items():
    for extra, expect in options:
        case(
            f"{command}-option-{extra.split()[0].lstrip('-')}-{extra.split()[-1]}",
            f"{argv} {extra}",
            files,
            expect,
        )
case(
    "generate-missing-output", "generate {d}/in.jsonl", {"in.jsonl": PROMPT}, "missing -o/--output"
)
case(
    "train-rm-missing-output",
    "train-rm {d}/in.jsonl",
    {"in.jsonl": PREF},
    "missing -o/--output-dir",
)
case(
    "winrate-missing-policy",
    "eval winrate {d}/in.jsonl -o {d}/o.jsonl",
    {"in.jsonl": PROMPT},
    "missing --policy",
)
case(
    "refusals-unlabelled",
    "eval refusals {d}/in.jsonl -o {d}/o.jsonl --policy p",
    {"in.jsonl": SAFE_PROMPT + b'{"prompt": "Hi"}\n'},
    'in.jsonl:2: each prompt needs "unsafe": true or false',
)
case(
    "refusals-to-stdout",
    "eval refusals {d}/in.jsonl -o - --policy p",
    {"in.jsonl": SAFE_PROMPT},
    "-o: refusals keeps",
)
case(
    "refusals-engine-openai",
    "eval refusals {d}/in.jsonl -o {d}/o.jsonl --policy p --engine openai",
    {"in.jsonl": SAFE_PROMPT},
    "--engine openai: choose one of auto, vllm, hf",
)
case(
    "winrate-to-stdout",
    "eval winrate {d}/in.jsonl -o - --policy p",
    {"in.jsonl": PROMPT},
    "-o: winrate keeps",
)
case("no-such-command", "frobnicate", {}, "No such command 'frobnicate'")

# --- 5. config files and constitutions --------------------------------------------------------
CONFIGS = {
    "unknown-key": (b"rounds: 1\nnumber-of-rounds: 3\n", "c.yaml: unknown key 'number-of-rounds'"),
    "bad-value": (b"rounds: many\n", "c.yaml: key 'rounds'"),
    "not-a-mapping": (b"- rounds\n", "c.yaml: expected a mapping"),
    "invalid-yaml": (b"rounds: [1\n", "c.yaml:"),
    "not-utf8": (b"rounds: \xff\n", "c.yaml: not UTF-8"),
    "alias-bomb": (BOMB, "c.yaml:"),
}
for problem, (content, expect) in CONFIGS.items():
    case(
        f"config-{problem}",
        f"{GEN} --config {{d}}/c.yaml",
        {"in.jsonl": PROMPT, "c.yaml": content},
        expect,
    )
case(
    "config-missing",
    f"{GEN} --config {{d}}/nope.yaml",
    {"in.jsonl": PROMPT},
    "nope.yaml: no such config file",
)
CONSTITUTIONS = {
    "id-list": (
        CONSTITUTION.replace(b"id: a", b"id: [a, b]"),
        "principle #1: id ['a', 'b'] must be",
    ),
    "id-spaces": (CONSTITUTION.replace(b"id: a", b"id: 'be kind'"), "principle #1: id 'be kind'"),
    "id-number": (CONSTITUTION.replace(b"id: a", b"id: 7"), "principle #1: id 7 must be"),
    "missing-revision": (CONSTITUTION.replace(b"revision: r, ", b""), "'revision' must be"),
    "alias-bomb": (BOMB, "c.yaml:"),
    "not-a-mapping": (b"- a\n", "c.yaml: expected a mapping"),
}
for problem, (content, expect) in CONSTITUTIONS.items():
    for command, argv, files in (
        ("generate", GEN, {"in.jsonl": PROMPT}),
        ("label", LAB, {"in.jsonl": PAIR}),
    ):
        case(
            f"{command}-constitution-{problem}",
            f"{argv} -c {{d}}/c.yaml",
            {**files, "c.yaml": content},
            expect,
        )
case("validate-alias-bomb", "constitution validate {d}/c.yaml", {"c.yaml": BOMB}, "c.yaml:")
case(
    "show-constitution-missing", "constitution show {d}/c.yaml", {}, "c.yaml: no such constitution"
)


# --- 6. outputs: never over an input, never over what rlaif did not write ---------------------
def symlink_to_input(d: Path) -> None:
    (d / "link.jsonl").symlink_to(d / "in.jsonl")


def hardlink_to_input(d: Path) -> None:
    os.link(d / "in.jsonl", d / "hard.jsonl")


for command, argv, content in (
    ("generate", "generate {in} -o {out} --engine hf", PROMPT),
    ("sample", "sample {in} -o {out} --engine hf", PROMPT),
    ("label", "label {in} -o {out} --engine hf", PAIR),
):
    spellings = {
        "same-path": ("{d}/in.jsonl", None),
        "dot-slash": ("{d}/./in.jsonl", None),
        "dot-dot": ("{d}/../{name}/in.jsonl", None),
        "symlink": ("{d}/link.jsonl", symlink_to_input),
        "hardlink": ("{d}/hard.jsonl", hardlink_to_input),
    }
    for spelling, (out, setup) in spellings.items():
        case(
            f"{command}-output-is-input-{spelling}",
            argv.replace("{in}", "{d}/in.jsonl").replace("{out}", out),
            {"in.jsonl": content},
            "is also an input",
            setup=setup,
        )
    case(
        f"{command}-output-not-written-by-rlaif",
        argv.replace("{in}", "{d}/in.jsonl").replace("{out}", "{d}/mine.jsonl"),
        {"in.jsonl": content, "mine.jsonl": b"my notes\n"},
        "mine.jsonl: exists and rlaif did not write it",
    )
    case(
        f"{command}-output-is-a-folder",
        argv.replace("{in}", "{d}/in.jsonl").replace("{out}", "{d}/folder"),
        {"in.jsonl": content, "folder/keep": b""},
        "folder: is a folder",
    )
case(
    "generate-output-is-the-constitution",
    f"{GEN.replace('{d}/out.jsonl', '{d}/c.yaml')} -c {{d}}/c.yaml",
    {"in.jsonl": PROMPT, "c.yaml": CONSTITUTION},
    "is also an input",
)
FOLDER_OUTPUTS = (  # problem, output, input, other files, expected
    ("output-folder-not-written-by-rlaif", "{d}/work", "{d}/in.jsonl", {"work/n.txt": b"mine"},
     "work: a folder rlaif did not write"),
    ("output-folder-holds-the-input", "{d}/work", "{d}/work/in.jsonl", {}, "is also an input"),
    ("output-is-a-file", "{d}/file", "{d}/in.jsonl", {"file": b"x"}, "file: exists and is not"),
)  # fmt: skip
for command, argv, content in (
    ("sft", "sft {in} -o {out}", CHAT),
    ("dpo", "dpo {in} -o {out}", PREF),
    ("train-rm", "train-rm {in} -o {out}", PREF),
    ("rl", "rl {in} -o {out} --reward judge", PROMPT),
):
    for problem, out, source, files, expect in FOLDER_OUTPUTS:
        case(
            f"{command}-{problem}",
            argv.replace("{in}", source).replace("{out}", out),
            {source.removeprefix("{d}/"): content, **files},
            expect,
        )
case(
    "sft-output-is-the-model",
    "sft {d}/in.jsonl -o {d}/model -m {d}/model",
    {"in.jsonl": CHAT, "model/config.json": b"{}", "model/model.safetensors": b"\0"},
    "is also an input",
)
case(
    "train-rm-force-never-deletes-a-foreign-folder",
    "train-rm {d}/in.jsonl -o {d}/work --force",
    {"in.jsonl": PREF, "work/notes.txt": b"mine"},
    "work: a folder rlaif did not write",
)
case(
    "score-output-not-written-by-rlaif",
    "score {d}/in.jsonl --rm {d}/rm -o {d}/mine.jsonl",
    {"in.jsonl": PAIR, "mine.jsonl": b"x\n", **REWARD_MODEL},
    "mine.jsonl: exists and rlaif did not write it",
)
case(
    "score-output-is-input",
    "score {d}/in.jsonl --rm {d}/rm -o {d}/./in.jsonl",
    {"in.jsonl": PAIR, **REWARD_MODEL},
    "is also an input",
)
case(
    "eval-rm-json-not-written-by-rlaif",
    "eval rm {d}/in.jsonl --rm {d}/rm --json {d}/notes.json",
    {"in.jsonl": PREF, "notes.json": b'{"mine": 1}', **REWARD_MODEL},
    "--json",
)
case(
    "eval-rm-plot-not-written-by-rlaif",
    "eval rm {d}/in.jsonl --rm {d}/rm --plot {d}/photo.png",
    {"in.jsonl": PREF, "photo.png": b"\x89PNG not really", **REWARD_MODEL},
    "--plot",
)
case(
    "report-output-not-written-by-rlaif",
    "report {d}/run -o {d}/page.html",
    {"run/keep": b"", "page.html": b"<html>my page</html>"},
    "page.html: exists and rlaif did not write it",
)

# --- 7. models and reward models --------------------------------------------------------------
case(
    "generate-model-without-weights",
    f"{GEN} -m {{d}}/model",
    {"in.jsonl": PROMPT, "model/config.json": b"{}"},
    "model: no model weights",
)
case(
    "generate-model-without-config",
    f"{GEN} -m {{d}}/model",
    {"in.jsonl": PROMPT, "model/model.safetensors": b"\0"},
    "model: folder has no config.json",
)
case(
    "label-not-a-gguf",
    f"{LAB} -m {{d}}/fake.gguf",
    {"in.jsonl": PAIR, "fake.gguf": b"this is text"},
    "fake.gguf: not a GGUF file",
)
case(
    "sft-model-without-weights",
    "sft {d}/in.jsonl -o {d}/out -m {d}/model",
    {"in.jsonl": CHAT, "model/config.json": b"{}"},
    "model: no model weights",
)
case(
    "generate-hub-id-offline",
    f"{GEN} -m some-org/some-model",
    {"in.jsonl": PROMPT},
    "some-org/some-model: HF_HUB_OFFLINE is set",
    env={"HF_HUB_OFFLINE": "1"},
)
case(
    "score-rm-is-a-causal-lm",
    "score {d}/in.jsonl --rm {d}/lm -o {d}/o.jsonl",
    {
        "in.jsonl": PAIR,
        "lm/config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "lm/model.safetensors": b"\0",
    },
    "a LlamaForCausalLM model, not a reward model",
)
case("eval-rm-missing-rm", "eval rm {d}/in.jsonl --rm {d}/nope", {"in.jsonl": PREF}, "--rm")
case(
    "winrate-rm-missing",
    "eval winrate {d}/in.jsonl -o {d}/o.jsonl --policy p --rm {d}/nope",
    {"in.jsonl": PROMPT},
    "not a reward-model folder",
)
case(
    "rl-reward-folder-without-weights",
    "rl {d}/in.jsonl -o {d}/out --reward {d}/rm",
    {"in.jsonl": PROMPT, "rm/config.json": RM_CONFIG},
    "rm: no model weights",
)

# --- 8. merge and report ----------------------------------------------------------------------
case(
    "merge-not-a-shard",
    "merge {d}/a.jsonl -o {d}/m.jsonl",
    {"a.jsonl": PAIR},
    "a.jsonl: no manifest",
)
case("merge-missing-file", "merge {d}/a.jsonl -o {d}/m.jsonl", {}, "a.jsonl: no such file")
case(
    "merge-output-is-a-shard",
    "merge {d}/a.jsonl {d}/b.jsonl -o {d}/../{name}/a.jsonl",
    {"a.jsonl": PAIR, "b.jsonl": PAIR},
    "is also an input",
)
case(
    "merge-output-is-a-shards-manifest",
    "merge {d}/a.jsonl -o {d}/a.jsonl.manifest.json",
    {"a.jsonl": PAIR},
    "is also an input",
)
case(
    "merge-stdin",
    "merge - -o {d}/m.jsonl",
    {},
    "merge reads files, not stdin",
)
case(
    "merge-manifest-is-a-list",
    "merge {d}/a.jsonl -o {d}/m.jsonl",
    {"a.jsonl": PAIR, "a.jsonl.manifest.json": b"[1, 2]"},
    "a.jsonl.manifest.json: not a manifest",
)
REPORTS = {
    "manifest-list": (
        {"run/x.jsonl.manifest.json": b"[]"},
        "x.jsonl.manifest.json: not a manifest",
    ),
    "manifest-not-utf8": (
        {"run/x.jsonl.manifest.json": b"\xff\xfe"},
        "x.jsonl.manifest.json: not a readable",
    ),
    "manifest-without-stage": (
        {"run/x.jsonl.manifest.json": b"{}"},
        "x.jsonl.manifest.json: not an rlaif manifest",
    ),
    "winrate-without-report": (
        {"run/w.jsonl.manifest.json": b'{"stage": "eval-winrate"}'},
        "w.jsonl: not what rlaif writes",
    ),
    "label-diagnostics-text": (
        {"run/l.jsonl.manifest.json": b'{"stage": "label", "diagnostics": "good"}'},
        "l.jsonl: not what rlaif writes",
    ),
    "training-metrics-list": (
        {"run/m/manifest.json": b'{"stage": "sft", "metrics": []}'},
        "m: not what rlaif writes",
    ),
    "not-a-folder": ({"run": b"x"}, "run: not a folder"),
}
for problem, (files, expect) in REPORTS.items():
    case(f"report-{problem}", "report {d}/run -o {d}/r.html", files, expect)


# --- 9. a served model that is not an OpenAI-compatible API ------------------------------------
class FakeServer(http.server.BaseHTTPRequestHandler):
    """/html/...: answers HTML with status 200; /empty/...: JSON with no choices."""

    def _reply(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/html"):
            self._reply(b"<html>a login page</html>", "text/html")
        else:
            self._reply(b'{"data": [{"id": "m"}]}', "application/json")

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path.startswith("/html"):
            self._reply(b"<html>a login page</html>", "text/html")
        elif self.path.startswith("/empty"):
            self._reply(b'{"choices": []}', "application/json")
        else:
            self._reply(
                b'{"choices": [{"message": {"content": "x"}}], "usage": "lots"}', "application/json"
            )

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


SERVED = {
    "html": ("/html/v1", "not an OpenAI-compatible API"),
    "no-choices": ("/empty/v1", "has no choices"),
}
for problem, (path, expect) in SERVED.items():
    for command, argv, content in (
        ("generate", "generate {d}/in.jsonl -o {d}/o.jsonl --max-retries 0", PROMPT),
        ("label", "label {d}/in.jsonl -o {d}/o.jsonl --max-retries 0", PAIR),
    ):
        case(
            f"{command}-server-{problem}",
            f"{argv} --engine openai -m m --base-url {{server}}{path}",
            {"in.jsonl": content},
            expect,
        )
case(
    "label-server-without-logprobs",
    "label {d}/in.jsonl -o {d}/o.jsonl --engine openai -m m --base-url {server}/v1",
    {"in.jsonl": PAIR},
    "gave no log-probabilities",
)


# --- 10. what people driving a shell or a Makefile trip over --------------------------------
# Each kind across every command it reaches; the commands as READERS runs them.
WRITERS = {  # command: (argv with {in} and {out}, a valid input, other files)
    "generate": ("generate {in} -o {out} --engine hf", PROMPT, {}),
    "sample": ("sample {in} -o {out} --engine hf", PROMPT, {}),
    "label": ("label {in} -o {out} --engine hf", PAIR, {}),
    "winrate": ("eval winrate {in} --policy p -o {out} --engine hf", PROMPT, {}),
    "refusals": ("eval refusals {in} --policy p -o {out} --engine hf", SAFE_PROMPT, {}),
    "score": ("score {in} --rm {d}/rm -o {out}", PAIR, REWARD_MODEL),
}
TRAINERS = {
    "sft": ("sft {in} -o {out}", CHAT),
    "dpo": ("dpo {in} -o {out}", PREF),
    "train-rm": ("train-rm {in} -o {out}", PREF),
    "rl": ("rl {in} -o {out} --reward judge", PROMPT),
}
SEEDED = ["generate", "sample", "label", "winrate", "refusals", "judge", *TRAINERS]

# Numbers that are not numbers: inf and nan pass `x > 0`, then fail inside JSON or a trainer.
NOT_FINITE = {
    "generate": ["--temperature", "--top-p"],
    "sample": ["--temperature"],
    "label": ["--clamp-low", "--tau"],
    "winrate": ["--temperature"],
    "judge": ["--tau"],
    "sft": ["--lr", "--epochs"],
    "dpo": ["--lr", "--beta"],
    "train-rm": ["--lr"],
    "rl": ["--lr"],
}
for command, flags in NOT_FINITE.items():
    argv = READERS[command][0].replace("{in}", "{d}/in.jsonl")
    for flag in flags:
        for value in ("inf", "nan"):
            case(
                f"{command}{flag}-{value}",
                f"{argv} {flag} {value}",
                {"in.jsonl": READERS[command][1], **READERS[command][2]},
                f"{flag} {value}: must be a finite number",
            )

# Seeds within what every library takes, checked where --seed is declared.
for command in SEEDED:
    argv = READERS[command][0].replace("{in}", "{d}/in.jsonl")
    for value in (str(2**64), "-1"):
        case(
            f"{command}-seed-{'huge' if value != '-1' else 'negative'}",
            [*argv.split(), "--seed", value],
            {"in.jsonl": READERS[command][1], **READERS[command][2]},
            f"--seed {int(value):,}: must be between 0 and {2**32 - 1:,}",
        )

# --max-steps 0 would publish the starting model as trained; a model folder is no stream.
for command, (argv, content) in TRAINERS.items():
    for steps in ("0", "-2"):
        case(
            f"{command}-max-steps-{steps}",
            argv.replace("{in}", "{d}/in.jsonl").replace("{out}", "{d}/model")
            + f" --max-steps {steps}",
            {"in.jsonl": content},
            f"--max-steps {steps}: at least 1",
        )
    case(
        f"{command}-output-dir-stdout",
        argv.replace("{in}", "{d}/in.jsonl").replace("{out}", "-"),
        {"in.jsonl": content},
        "-o/--output-dir -: a model is a folder",
    )
case(
    "report-to-stdout",
    "report {d} -o -",
    {"x.jsonl": PROMPT},
    "-o/--output -: this output cannot go to standard output",
)
case(
    "eval-rm-plot-to-stdout",
    "eval rm {d}/in.jsonl --rm {d}/rm --plot -",
    {"in.jsonl": PREF, **REWARD_MODEL},
    "--plot -: this output cannot go to standard output",
)
case(
    "eval-rm-json-to-stdout",
    "eval rm {d}/in.jsonl --rm {d}/rm --json -",
    {"in.jsonl": PREF, **REWARD_MODEL},
    "--json -: this output cannot go to standard output",
)

# Text that is not text: a lone surrogate escape parses as JSON, then cannot be written back.
SURROGATE = {
    "generate": b'{"id": "a", "prompt": "Hi \\ud800 there"}\n',
    "sample": b'{"id": "a", "prompt": "\\udc00"}\n',
    "label": b'{"id": "a", "prompt": "Q?", "responses": ["\\ud83d", "no"]}\n',
    "winrate": b'{"id": "a", "prompt": "\\ud800"}\n',
    "refusals": b'{"id": "a", "prompt": "\\ud800", "unsafe": false}\n',
    "sft": CHAT.replace(b'"A"', b'"\\ud800"'),
    "dpo": PREF.replace(b'"yes"', b'"\\udfff"'),
    "train-rm": PREF.replace(b'"no"', b'"\\ud800"'),
    "rl": b'{"id": "a", "prompt": "\\ud800"}\n',
    "score": PAIR.replace(b'"yes"', b'"\\ud800"'),
    "show": b'{"id": "a", "prompt": "\\ud800"}\n',
    "judge": PAIR.replace(b'"no"', b'"\\ud800"'),
}
for command, content in SURROGATE.items():
    argv, _, extra = READERS[command]
    case(
        f"{command}-lone-surrogate",
        argv.replace("{in}", "{d}/in.jsonl"),
        {"in.jsonl": PROMPT + content if command in ("generate", "sample") else content, **extra},
        f"in.jsonl:{2 if command in ('generate', 'sample') else 1}: holds a lone surrogate escape",
    )

# ... and in YAML (a double-quoted "\ud800"), in a constitution or a config file.
SURROGATE_CONSTITUTION = CONSTITUTION.replace(b"critique: c", b'critique: "c \\ud800"')
for name, argv in (
    ("constitution-lone-surrogate", "constitution validate {d}/c.yaml"),
    ("constitution-show-lone-surrogate", "constitution show {d}/c.yaml"),
    ("generate-constitution-lone-surrogate", f"{GEN} -c {{d}}/c.yaml"),
):
    case(
        name,
        argv,
        {"in.jsonl": PROMPT, "c.yaml": SURROGATE_CONSTITUTION},
        "c.yaml:4: holds a lone surrogate escape",
    )
case(
    "config-lone-surrogate",
    f"{GEN} --config {{d}}/run.yaml",
    {"in.jsonl": PROMPT, "run.yaml": b'seed: 1\nmodel: "m\\udc00"\n'},
    "run.yaml:2: holds a lone surrogate escape",
)

# A file name that is not UTF-8 (as a shell passes one: bytes, surrogate-escaped by Python).
BAD_NAME = "{d}/caf\udce9.jsonl"
for command, (argv, content, extra) in WRITERS.items():
    case(
        f"{command}-output-name-not-utf8",
        argv.replace("{in}", "{d}/in.jsonl").replace("{out}", BAD_NAME),
        {"in.jsonl": content, **extra},
        "is not valid UTF-8 text",
    )
for command, (argv, content) in TRAINERS.items():
    case(
        f"{command}-output-name-not-utf8",
        argv.replace("{in}", "{d}/in.jsonl").replace("{out}", "{d}/mod\udce9l"),
        {"in.jsonl": content},
        "is not valid UTF-8 text",
    )
for command in ("generate", "label", "sft"):
    argv, content, extra = READERS[command]
    case(
        f"{command}-input-name-not-utf8",
        argv.replace("{in}", BAD_NAME),
        {"caf\udce9.jsonl": content, **extra},
        "is not valid UTF-8 text",
    )

# Keys given twice: YAML forbids them, PyYAML keeps the last without a word.
DUPLICATE_PRINCIPLES = (
    CONSTITUTION + b"principles:\n  - {id: b, critique: c, revision: r, preference: p}\n"
)
case(
    "constitution-duplicate-key",
    "constitution validate {d}/c.yaml",
    {"c.yaml": DUPLICATE_PRINCIPLES},
    "c.yaml:5: key 'principles' appears twice",
)
for command in ("generate", "label", "winrate"):
    argv = READERS[command][0].replace("{in}", "{d}/in.jsonl")
    case(
        f"{command}-constitution-duplicate-key",
        f"{argv} -c {{d}}/c.yaml",
        {"in.jsonl": READERS[command][1], "c.yaml": DUPLICATE_PRINCIPLES},
        "c.yaml:5: key 'principles' appears twice",
    )
for command in ("generate", "label", "sft", "dpo", "rl"):
    argv = READERS[command][0].replace("{in}", "{d}/in.jsonl")
    case(
        f"{command}-config-duplicate-key",
        f"{argv} --config {{d}}/run.yaml",
        {"in.jsonl": READERS[command][1], "run.yaml": b"seed: 1\nchunk_size: 2\nseed: 3\n"},
        "run.yaml:3: key 'seed' appears twice in one mapping (first on line 1)",
    )
case(
    "config-duplicate-key-one-line",
    f"{GEN} --config {{d}}/run.yaml",
    {"in.jsonl": PROMPT, "run.yaml": b"{seed: 1, seed: 3}\n"},
    "run.yaml:1: key 'seed' appears twice in one mapping (first on line 1)",
)
case(
    "constitution-duplicate-key-one-line",
    "constitution validate {d}/c.yaml",
    {"c.yaml": CONSTITUTION.replace(b"{id: a,", b"{id: a, id: b,")},
    "c.yaml:4: key 'id' appears twice in one mapping (first on line 4)",
)
# ... but a YAML merge key (`<<: *base`) may give a key again: read as yaml.safe_load reads it.
case(
    "config-merge-key-read",
    f"{GEN} --config {{d}}/run.yaml",
    {"in.jsonl": PROMPT, "run.yaml": b"<<: {rounds: many, seed: 1}\nseed: 2\n"},
    "run.yaml: key 'rounds'",
)


# `rlaif label` rows edited by hand, checked before the reward model loads: the fake REWARD_MODEL
# holds no weights, so a row that reached the model would fail with another message.
LABEL_ROWS = {
    "label-row-no-responses": LABELLED.replace(b'"responses": ["yes", "no"], ', b""),
    "label-row-responses-text": LABELLED.replace(b'["yes", "no"]', b'"yes or no"'),
}
for command in ("score", "eval-rm"):
    argv, _, extra = READERS[command]
    for problem, content in LABEL_ROWS.items():
        case(
            f"{command}-{problem}",
            argv.replace("{in}", "{d}/in.jsonl"),
            {"in.jsonl": content + b"\n", **extra},
            "in.jsonl:1: 'responses' of a label row must be a list of texts",
        )
case(
    "eval-rm-label-row-reference-text",
    READERS["eval-rm"][0].replace("{in}", "{d}/in.jsonl"),
    {
        "in.jsonl": LABELLED.replace(b'"reference": 0', b'"reference": "first"') + b"\n",
        **REWARD_MODEL,
    },
    "in.jsonl:1: 'reference' of a label row must be 0 or 1",
)


# An output edited by hand after rlaif wrote it: its manifest no longer vouches for it.
def written_then_edited(out: str, same_size: bool):
    """`same_size`: one character changed, so only the sha256 tells; else a row cut short."""

    def setup(d: Path) -> None:
        written = b'{"id": "a"}\n'
        recorded = {"size": len(written), "sha256": hashlib.sha256(written).hexdigest()}
        (d / out).write_bytes(b'{"id": "b"}\n' if same_size else written[:3])
        manifest = {"stage": "x", "fingerprint": {}, "output": recorded}
        (d / f"{out}.manifest.json").write_text(json.dumps(manifest))

    return setup


for command, (argv, content, extra) in WRITERS.items():
    for edit, same_size in (("edited-by-hand", False), ("edited-same-size", True)):
        case(
            f"{command}-output-{edit}",
            argv.replace("{in}", "{d}/in.jsonl").replace("{out}", "{d}/out.jsonl"),
            {"in.jsonl": content, **extra},
            "out.jsonl: changed since rlaif wrote it",
            setup=written_then_edited("out.jsonl", same_size),
        )


# Two runs writing one output (make -j with two targets naming one file).
HOLDERS: list = []
HOLD = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242'); print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def another_run_writes(out: str):
    def setup(d: Path) -> None:
        import subprocess
        import sys

        target = d / out
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(target.with_name(f".{target.name}.lock"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert holder.stdout.readline() == b"held\n"
        HOLDERS.append(holder)

    return setup


@pytest.fixture(scope="module", autouse=True)
def _release_holders():
    yield
    for holder in HOLDERS:
        holder.stdin.close()
        holder.wait(timeout=10)


for command, (argv, content, extra) in WRITERS.items():
    case(
        f"{command}-two-writers",
        argv.replace("{in}", "{d}/in.jsonl").replace("{out}", "{d}/out.jsonl"),
        {"in.jsonl": content, **extra},
        "out.jsonl: another rlaif run (pid 4242) is writing it",
        setup=another_run_writes("out.jsonl"),
    )
for command, (argv, content) in TRAINERS.items():
    case(
        f"{command}-two-writers",
        argv.replace("{in}", "{d}/in.jsonl").replace("{out}", "{d}/model"),
        {"in.jsonl": content},
        "model: another rlaif run (pid 4242) is writing it",
        setup=another_run_writes("model"),
    )

# Inputs as people have them: gzip-compressed JSONL, read transparently, errors by line.
GZ_FILES = {
    "gz-not-gzip": (b"not gzip at all\n", "in.jsonl.gz: not a complete gzip file"),
    "gz-cut-short": (
        gzip.compress(b"".join(b'{"id": "%d"}\n' % (i * 7919 % 100003) for i in range(400)))[:300],
        "in.jsonl.gz: not a complete gzip file",
    ),
    "gz-invalid-json": (
        gzip.compress(b'{"id": "a"}\n{oops}\n'),
        "in.jsonl.gz:2: line contains invalid json",
    ),
}
for command, (argv, _, extra) in READERS.items():
    for problem, (content, expect) in GZ_FILES.items():
        case(
            f"{command}-{problem}",
            argv.replace("{in}", "{d}/in.jsonl.gz"),
            {"in.jsonl.gz": content, **extra},
            expect,
        )


# ... parquet files, `datasets` folders and hub datasets, through `datasets`.
for command in ("generate", "label", "dpo", "agreement", "show"):
    argv, _, extra = READERS[command]
    case(
        f"{command}-parquet-not-parquet",
        argv.replace("{in}", "{d}/in.parquet"),
        {"in.parquet": b"not parquet\n", **extra},
        "in.parquet: cannot be read as a dataset",
    )
    case(
        f"{command}-parquet-missing",
        argv.replace("{in}", "{d}/in.parquet"),
        dict(extra),
        "in.parquet: no such file",
    )
    case(
        f"{command}-hub-dataset-offline",
        argv.replace("{in}", "hf:no-such-org/no-such-data"),
        dict(extra),
        "hf:no-such-org/no-such-data: the hub (127.0.0.1) cannot be reached",
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
    )


def parquet_with(column: str, value):
    """A parquet input whose one row holds `column` besides a prompt and a pair."""

    def setup(d: Path) -> None:
        import pyarrow
        import pyarrow.parquet

        row = {"id": "a", "prompt": "Q?", "responses": ["yes", "no"], column: value}
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist([row]), d / "in.parquet")

    return setup


# Columns no JSON line can hold: each stage writes its rows back as JSONL.
for command, column, value in (
    ("generate", "asked", datetime.datetime(2024, 5, 1, 12, 0)),
    ("label", "audio", b"\x00\x01"),
    ("show", "asked", datetime.date(2024, 5, 1)),
):
    argv, _, extra = READERS[command]
    case(
        f"{command}-parquet-{type(value).__name__}-column",
        argv.replace("{in}", "{d}/in.parquet"),
        dict(extra),
        f"in.parquet:1: column '{column}' holds what JSON cannot",
        setup=parquet_with(column, value),
    )


# --- the test ---------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    """Every path below `folder` with what it is: a file's content hash, a link's target."""
    out = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            out[name] = f"link:{os.readlink(path)}"
        elif path.is_file():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[name] = "folder"
    return out


def test_there_are_enough_cases():
    assert len(CASES) >= 120, len(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, monkeypatch, request):
    c = CASES[name]
    d = tmp_path / "work"
    d.mkdir()
    for rel, content in c.files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(content)
    if c.setup:
        c.setup(d)
    for key, value in c.env.items():
        monkeypatch.setenv(key, value)
    server = request.getfixturevalue("fake_server") if "{server}" in " ".join(c.argv) else ""
    argv = [
        a.replace("{d}", str(d)).replace("{name}", d.name).replace("{server}", server)
        for a in c.argv
    ]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, argv)
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output[-2000:]}"
    lines = output.strip().splitlines()
    assert len(lines) == 1, output[-3000:]
    assert "Traceback" not in output and lines[0].startswith("error: "), output
    expect = c.expect.replace("{d}", str(d))
    assert expect in lines[0], f"expected {expect!r} in {lines[0]!r}"
    assert snapshot(tmp_path) == before
