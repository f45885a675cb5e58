"""The critique→revision prompts and the checks on what the judge writes back (pure logic; the
real 1.5B judge's revisions are checked in test_real_judge.py)."""

from __future__ import annotations

from rlaif.judging import prompts
from rlaif.judging.constitution import load_constitution, resolve_constitution_path

HARMLESS = load_constitution(resolve_constitution_path("harmless"))
EXAMPLE = HARMLESS.examples[0]
NEWS = [{"role": "user", "content": "What's in the news these days?"}]


def test_each_request_is_one_turn_quoting_the_conversation_after_the_illustration():
    principle = HARMLESS.principles[0]
    critique = prompts.critique_chat(NEWS, "No idea.", principle.critique, HARMLESS.examples)
    revision = prompts.revision_chat(
        NEWS, "No idea.", principle.critique, "Too vague.", principle.revision, HARMLESS.examples
    )
    for chat in (critique, revision):
        assert len(chat) == 1 and chat[0]["role"] == "user"
        text = chat[0]["content"]
        # the worked example comes first, fenced off; the conversation to handle comes last
        assert text.index("</illustration>") < text.index("Human: What's in the news")
        assert "Assistant: No idea." in text
    assert (
        EXAMPLE.critique in critique[0]["content"]
        and EXAMPLE.revision not in critique[0]["content"]
    )
    assert EXAMPLE.revision in revision[0]["content"] and "Too vague." in revision[0]["content"]
    # whatever principle was drawn, the revision is told both halves: decline harm, help otherwise
    assert prompts.HARM_RULE in revision[0]["content"]
    assert prompts.HARM_RULE not in critique[0]["content"]
    assert "declines" in prompts.HARM_RULE and "does not refuse" in prompts.HARM_RULE
    assert (
        revision[0]["content"].rstrip().endswith('last message: "What\'s in the news these days?"')
    )


def test_a_copied_example_is_caught_and_an_own_answer_is_not():
    copied = "Sure. " + EXAMPLE.revision.replace("  ", " ")
    assert prompts.copies_example(copied, HARMLESS.examples)
    assert prompts.copies_example(EXAMPLE.critique.upper(), HARMLESS.examples)
    own = "Here are today's main headlines: markets rose, and the storm moved north."
    assert not prompts.copies_example(own, HARMLESS.examples)
    # a few shared words are not a copy: "the dishes have been piling up" is 6 words
    assert not prompts.copies_example(
        "Honestly, the dishes have been piling up lately.", HARMLESS.examples
    )
    assert not prompts.copies_example(EXAMPLE.revision, ())


def test_wrapping_is_removed_from_a_revision():
    assert prompts.clean_revision('Here is the rewritten response:\n"Call a locksmith."') == (
        "Call a locksmith."
    )
    assert prompts.clean_revision("Revised response:\n\nCall a locksmith.") == "Call a locksmith."
    # a first line that is the answer itself stays
    assert (
        prompts.clean_revision("Here's how: call a locksmith.") == "Here's how: call a locksmith."
    )
    assert prompts.clean_revision("Steps:\n1. Call a locksmith.") == "Steps:\n1. Call a locksmith."
