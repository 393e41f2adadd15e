"""The simulator's out-of-band feedback responses and its welcome back, over real sockets.

Every event read passes the SDK oracle (realtime_client). The feedback a simulated lesson gets must be
one JSON object of the relay's schema, built from that lesson's conversation, and must leave the
conversation as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field
from realtime_client import (
    GA_SESSION,
    PROMPT,
    RealtimeTestClient,
    of_type,
    realtime_client,
    running,
    silence,
    speech,
)

from app.simulator import RealtimeSimulator, SimulatorBehaviour, lesson_feedback, remembered

FEEDBACK_INSTRUCTIONS = (
    "The lesson is over. Write feedback for the student as one JSON object: "
    '{"summary": str, "corrections": [{"said": str, "better": str, "why": str}], '
    '"new_words": [{"word": str, "meaning": str}], "next_step": str}.'
)
FEEDBACK_REQUEST: dict[str, Any] = {
    "conversation": "none",
    "output_modalities": ["text"],
    "metadata": {"purpose": "feedback", "lesson_id": "lesson-42"},
    "instructions": FEEDBACK_INSTRUCTIONS,
}
OUT_OF_BAND_TEXT_ORDER = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]
MEMORY = (
    "\n# What you remember about Ana\n"
    "- You told me about your dog Max.\n"
    "- New words: favourite (the one you like best).\n"
)


class Correction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    said: str
    better: str
    why: str


class NewWord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    word: str
    meaning: str


class Feedback(BaseModel):
    """The object the relay asks for; extra fields are refused."""

    model_config = ConfigDict(extra="forbid")
    summary: str = Field(min_length=1)
    corrections: list[Correction] = Field(max_length=5)
    new_words: list[NewWord] = Field(max_length=8)
    next_step: str = Field(min_length=1)


@pytest.fixture
async def simulator() -> AsyncIterator[RealtimeSimulator]:
    async with running(SimulatorBehaviour(audio_pace=0)) as started:
        yield started


def collapsed(events: list[dict[str, Any]]) -> list[str]:
    """Event types, each run of text deltas folded into one."""
    types: list[str] = []
    for event in events:
        if not (types and types[-1] == event["type"] == "response.output_text.delta"):
            types.append(event["type"])
    return types


async def greet_and_answer(client: RealtimeTestClient, *, typed: str | None = None) -> list[str]:
    """Greeting, one spoken student turn and its reply (and a typed student message): the tutor's lines."""
    await client.configure()
    await client.send({"type": "response.create"})
    greeting = (await client.until("response.done"))[-1]["response"]
    await client.append(speech() + silence(700))
    reply = (await client.until("response.done"))[-1]["response"]
    if typed is not None:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": typed}]}
        await client.send({"type": "conversation.item.create", "item": item})
        await client.until("conversation.item.done")
    return [response["output"][0]["content"][0]["transcript"] for response in (greeting, reply)]


async def ask_for_feedback(client: RealtimeTestClient, **changes: Any) -> list[dict[str, Any]]:
    await client.send({"type": "response.create", "event_id": "evt_feedback", "response": FEEDBACK_REQUEST | changes})
    return await client.until("response.done")


# --- out-of-band feedback ------------------------------------------------------------------------


async def test_feedback_is_out_of_band_text_in_ga_order_with_metadata_and_usage(
    simulator: RealtimeSimulator,
) -> None:
    async with realtime_client(simulator) as client:
        await greet_and_answer(client)
        events = await ask_for_feedback(client)

    assert collapsed(events) == OUT_OF_BAND_TEXT_ORDER
    created, done = events[0]["response"], events[-1]["response"]
    for response in (created, done):
        assert response["metadata"] == {"purpose": "feedback", "lesson_id": "lesson-42"}
        assert response["conversation_id"] is None
        assert response["output_modalities"] == ["text"]
    assert done["status"] == "completed"
    text = of_type(events, "response.output_text.done")[0]["text"]
    assert "".join(event["delta"] for event in of_type(events, "response.output_text.delta")) == text
    assert of_type(events, "response.content_part.done")[0]["part"] == {"type": "text", "text": text}
    assert done["output"][0]["content"] == [{"type": "output_text", "text": text}]
    assert done["output"][0]["status"] == "completed"
    Feedback.model_validate_json(text)
    usage = done["usage"]
    assert usage["output_token_details"] == {"text_tokens": usage["output_tokens"], "audio_tokens": 0}
    assert usage["output_tokens"] > 0
    assert usage["input_token_details"]["audio_tokens"] > 0  # it saw the spoken conversation


async def test_feedback_is_built_from_the_conversation_the_lesson_had(simulator: RealtimeSimulator) -> None:
    async with realtime_client(simulator) as longer:
        tutor_lines = await greet_and_answer(longer, typed="I have 20 years. Yesterday I go to the park.")
        longer_feedback = Feedback.model_validate_json(
            of_type(await ask_for_feedback(longer), "response.output_text.done")[0]["text"]
        )
    async with realtime_client(simulator) as shorter:
        await shorter.configure()
        await shorter.send({"type": "response.create"})
        await shorter.until("response.done")
        shorter_feedback = Feedback.model_validate_json(
            of_type(await ask_for_feedback(shorter), "response.output_text.done")[0]["text"]
        )

    assert tutor_lines == [
        "Hello Ana! I am your English tutor. How are you today?",
        "Very good, Ana! Now tell me: what is your favourite food?",
    ]
    assert longer_feedback.summary == (
        "Today we talked about how you are and your favourite food. You answered 2 times: well done, Ana!"
    )
    assert [correction.model_dump() for correction in longer_feedback.corrections] == [
        {"said": "I have 20 years.", "better": "I am 20 years old.",
         "why": "In English you are an age: 'I am 20 years old'."},
        {"said": "Yesterday I go to the park.", "better": "Yesterday I went to the park.",
         "why": "For the past, use the past tense: 'I went'."},
    ]
    assert [word.word for word in longer_feedback.new_words] == ["tutor", "favourite"]
    assert longer_feedback.next_step == 'Practise saying: "I am 20 years old."'

    assert shorter_feedback.summary == (
        "Today we talked about how you are. You did not answer yet, and that is fine."
    )
    assert shorter_feedback.corrections == []
    assert [word.word for word in shorter_feedback.new_words] == ["tutor"]
    assert shorter_feedback.next_step == "Next time, tell me more about how you are."


async def test_feedback_sees_a_truncated_reply_only_as_far_as_the_student_heard_it(
    simulator: RealtimeSimulator,
) -> None:
    async with realtime_client(simulator) as client:
        await greet_and_answer(client)
        reply = of_type(client.events, "response.done")[-1]["response"]["output"][0]
        # "Very good, Ana! Now tell me: what is your favourite food?": the student stopped hearing it after "Ana!"
        # (its audio starts at 943 ms, "Now" at 1 693 ms); "favourite food" was never heard.
        await client.send({"type": "conversation.item.truncate", "item_id": reply["id"], "content_index": 0,
                           "audio_end_ms": 1200})
        await client.until("conversation.item.truncated")
        feedback = Feedback.model_validate_json(
            of_type(await ask_for_feedback(client), "response.output_text.done")[0]["text"]
        )
    assert feedback.summary == "Today we talked about how you are. You answered once, Ana: a good start!"
    assert [word.word for word in feedback.new_words] == ["tutor"]


async def test_a_deleted_reply_leaves_the_conversation_for_the_feedback_the_next_answer_and_the_token_counts(
    simulator: RealtimeSimulator,
) -> None:
    async with realtime_client(simulator) as client:
        await greet_and_answer(client)
        reply = of_type(client.events, "response.done")[-1]["response"]
        with_reply = (await ask_for_feedback(client))[-1]["response"]
        # "Very good, Ana! Now tell me: what is your favourite food?", none of it heard: deleted.
        await client.send({"type": "conversation.item.delete", "event_id": "evt_delete",
                           "item_id": reply["output"][0]["id"]})
        deleted = (await client.until("conversation.item.deleted"))[-1]
        without_reply = (await ask_for_feedback(client))[-1]["response"]
        feedback = Feedback.model_validate_json(without_reply["output"][0]["content"][0]["text"])
        # The tutor's next answer does not know it said the deleted one: it says it again.
        await client.send({"type": "response.create"})
        following = (await client.until("response.done"))[-1]["response"]
        await client.send({"type": "conversation.item.retrieve", "event_id": "evt_get",
                           "item_id": reply["output"][0]["id"]})
        gone = (await client.until("error"))[-1]["error"]

    assert deleted == {"type": "conversation.item.deleted", "event_id": deleted["event_id"],
                       "item_id": reply["output"][0]["id"]}
    assert feedback.summary == "Today we talked about how you are. You answered once, Ana: a good start!"
    assert [word.word for word in feedback.new_words] == ["tutor"]
    assert following["output"][0]["content"][0]["transcript"] == reply["output"][0]["content"][0]["transcript"]
    # The reply left the context with it: the same request reads fewer input tokens than before the delete.
    assert "favourite" in with_reply["output"][0]["content"][0]["text"]
    assert without_reply["usage"]["input_tokens"] < with_reply["usage"]["input_tokens"]
    assert (gone["code"], gone["event_id"]) == ("item_retrieve_invalid_item_id", "evt_get")


async def test_a_reply_deleted_while_it_is_being_said_adds_nothing_to_the_conversation_when_it_ends() -> None:
    async with running(SimulatorBehaviour(audio_pace=1.0)) as simulator, realtime_client(simulator) as client:
        await client.configure()
        await client.send({"type": "response.create"})
        started = (await client.until("response.output_audio.delta"))[-1]
        await client.send({"type": "conversation.item.delete", "item_id": started["item_id"]})
        await client.until("conversation.item.deleted")
        await client.send({"type": "response.cancel"})
        await client.until("response.done")
        await client.send({"type": "response.create"})
        again = (await client.until("response.done"))[-1]["response"]
    # Nothing of the deleted greeting stayed: the tutor greets again, from a context as empty as the first.
    assert again["output"][0]["content"][0]["transcript"] == "Hello Ana! I am your English tutor. How are you today?"
    assert again["usage"]["input_token_details"]["audio_tokens"] == 0


@pytest.mark.parametrize("item_id", ["item_never_made", None])
async def test_deleting_an_item_the_conversation_does_not_have_is_refused_as_the_real_api_does(
    simulator: RealtimeSimulator, item_id: str | None,
) -> None:
    async with realtime_client(simulator) as client:
        await client.configure()
        event: dict[str, Any] = {"type": "conversation.item.delete", "event_id": "evt_delete"}
        if item_id is not None:
            event["item_id"] = item_id
        await client.send(event, conforming=item_id is not None)
        error = (await client.until("error"))[-1]["error"]
        # The conversation is as it was: the greeting is asked for and comes.
        await client.send({"type": "response.create"})
        assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"

    if item_id is None:
        assert (error["code"], error["param"], error["event_id"]) == (
            "missing_required_parameter", "item_id", "evt_delete")
    else:
        assert error == {"type": "invalid_request_error", "code": "item_delete_invalid_item_id",
                         "message": "Error deleting item: the item with id 'item_never_made' does not exist.",
                         "param": None, "event_id": "evt_delete"}


async def test_feedback_is_not_added_to_the_conversation_and_the_lesson_goes_on(
    simulator: RealtimeSimulator,
) -> None:
    async with realtime_client(simulator) as client:
        await greet_and_answer(client)
        events = await ask_for_feedback(client)
        feedback_item = events[-1]["response"]["output"][0]["id"]
        await client.send({"type": "conversation.item.retrieve", "event_id": "evt_get", "item_id": feedback_item})
        error = (await client.until("error"))[-1]["error"]
        # The tutor's next line is the one after its last spoken reply: the feedback took no turn.
        await client.send({"type": "response.create"})
        following = (await client.until("response.done"))[-1]["response"]

    assert (error["code"], error["event_id"]) == ("item_retrieve_invalid_item_id", "evt_get")
    assert following["output"][0]["content"][0]["transcript"] == "Great job, Ana. Where do you live?"
    assert following["conversation_id"] is not None


async def test_an_out_of_band_response_without_feedback_metadata_gets_a_tutor_line(
    simulator: RealtimeSimulator,
) -> None:
    async with realtime_client(simulator) as client:
        await client.configure()
        events = await ask_for_feedback(client, metadata={"purpose": "topic"})
        text = of_type(events, "response.output_text.done")[0]["text"]
    assert text == "Hello Ana! I am your English tutor. How are you today?"
    assert events[-1]["response"]["metadata"] == {"purpose": "topic"}


@pytest.mark.parametrize(("metadata", "param"), [
    ({f"key{number}": "x" for number in range(17)}, "response.metadata"),
    ({"purpose": 7}, "response.metadata.purpose"),
    ({"k" * 65: "x"}, "response.metadata." + "k" * 65),
    ({"purpose": "x" * 513}, "response.metadata.purpose"),
    ("feedback", "response.metadata"),
])
async def test_metadata_the_real_api_refuses_is_refused(
    simulator: RealtimeSimulator, metadata: object, param: str
) -> None:
    async with realtime_client(simulator) as client:
        request = {"type": "response.create", "event_id": "evt_meta",
                   "response": FEEDBACK_REQUEST | {"metadata": metadata}}
        await client.send(request, conforming=False)
        error = (await client.until("error"))[-1]["error"]
    assert (error["param"], error["event_id"]) == (param, "evt_meta")
    assert error["code"] in ("invalid_value", "invalid_type")


@pytest.mark.parametrize(("fault", "status", "details"), [
    ("failed", "failed", {"type": "failed",
                          "error": {"type": "server_error", "code": "server_error",
                                    "message": "The server had an error while processing your request."}}),
    ("invalid_json", "completed", {"type": "completed"}),
    ("incomplete", "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}),
])
async def test_feedback_faults_fail_only_the_feedback(fault: str, status: str, details: dict[str, Any]) -> None:
    behaviour = SimulatorBehaviour(audio_pace=0, feedback_fault=fault)  # type: ignore[arg-type]
    async with running(behaviour) as simulator, realtime_client(simulator) as client:
        tutor_lines = await greet_and_answer(client)
        done = (await ask_for_feedback(client))[-1]["response"]

    assert tutor_lines[0] == "Hello Ana! I am your English tutor. How are you today?"
    assert (done["status"], done["status_details"]) == (status, details)
    assert done["metadata"]["purpose"] == "feedback"
    texts = [part["text"] for item in done["output"] for part in item["content"]]
    for text in texts:
        with pytest.raises(ValueError, match="Invalid JSON"):
            Feedback.model_validate_json(text)
    assert len(texts) == (0 if fault == "failed" else 1)


async def test_a_feedback_request_that_is_never_answered() -> None:
    async with running(SimulatorBehaviour(audio_pace=0, feedback_fault="never")) as simulator, \
            realtime_client(simulator) as client:
        await greet_and_answer(client)
        await client.send({"type": "response.create", "response": FEEDBACK_REQUEST})
        await client.send({"type": "response.cancel", "event_id": "evt_nothing_to_cancel"})
        after = await client.until("error")

    assert [event["type"] for event in after] == ["error"]
    assert after[0]["error"]["code"] == "response_cancel_not_active"


async def test_a_slow_feedback_answer_is_nothing_but_its_response_created_until_it_starts() -> None:
    # Ten minutes: the answer cannot start during the test, so whatever comes before the cancel came early.
    async with running(SimulatorBehaviour(audio_pace=0, feedback_delay_ms=600_000)) as simulator, \
            realtime_client(simulator) as client:
        await greet_and_answer(client)
        await client.send({"type": "response.create", "response": FEEDBACK_REQUEST})
        started = await client.until("rate_limits.updated")
        await client.send({"type": "response.cancel"})
        ended = await client.until("response.done")

    assert [event["type"] for event in started] == ["response.created", "rate_limits.updated"]
    assert of_type(ended, "response.output_text.delta") == []
    assert ended[-1]["response"]["status"] == "cancelled"
    assert ended[-1]["response"]["metadata"]["purpose"] == "feedback"


def test_feedback_reads_typed_text_and_transcripts_and_caps_its_lists() -> None:
    mistakes = " ".join(f"She go to work {day}." for day in ("Monday", "Tuesday", "Wednesday", "Thursday"))
    items = [
        {"role": "assistant", "content": [{"type": "output_audio", "transcript": "Hello Ana! How are you today?"}]},
        {"role": "user", "content": [{"type": "input_audio", "transcript": "I am agree, people is nice."}]},
        {"role": "user", "content": [{"type": "input_audio", "transcript": None}]},
        {"role": "user", "content": [{"type": "input_text", "text": mistakes}]},
        {"role": "system", "content": [{"type": "input_text", "text": "I am agree."}]},
    ]
    feedback = Feedback.model_validate(lesson_feedback(items, PROMPT))
    assert [correction.said for correction in feedback.corrections] == [
        "I am agree, people is nice.", "I am agree, people is nice.",
        "She go to work Monday.", "She go to work Tuesday.", "She go to work Wednesday.",
    ]
    assert feedback.corrections[1].better == "I am agree, people are nice."
    assert feedback.summary.endswith("You answered 3 times: well done, Ana!")


# --- welcome back --------------------------------------------------------------------------------


async def test_a_remembered_student_is_welcomed_back_with_one_remembered_thing(
    simulator: RealtimeSimulator,
) -> None:
    async with realtime_client(simulator) as client:
        await client.configure({**GA_SESSION, "instructions": PROMPT + "\n# Always\n- Be kind.\n" + MEMORY})
        await client.send({"type": "response.create"})
        greeting = (await client.until("response.done"))[-1]["response"]
    assert greeting["output"][0]["content"][0]["transcript"] == (
        "Welcome back, Ana! I remember from last time: You told me about your dog Max. "
        "What can you tell me about that today?"
    )


async def test_a_quoted_remembered_thing_is_said_without_its_quotes(simulator: RealtimeSimulator) -> None:
    quoted = '# What you remember about the student\n- "You told me about your dog Max."\n'
    async with realtime_client(simulator) as client:
        await client.configure({**GA_SESSION, "instructions": PROMPT + "\n" + quoted})
        await client.send({"type": "response.create"})
        greeting = (await client.until("response.done"))[-1]["response"]
    assert greeting["output"][0]["content"][0]["transcript"] == (
        "Welcome back, Ana! I remember from last time: You told me about your dog Max. "
        "What can you tell me about that today?"
    )


async def test_without_remembered_bullets_the_greeting_is_the_first_lesson_one(
    simulator: RealtimeSimulator,
) -> None:
    async with realtime_client(simulator) as client:
        empty_memory = PROMPT + "\n# What you remember about Ana\n\n# Always\n- Be kind.\n"
        await client.configure({**GA_SESSION, "instructions": empty_memory})
        await client.send({"type": "response.create"})
        greeting = (await client.until("response.done"))[-1]["response"]
    assert greeting["output"][0]["content"][0]["transcript"] == (
        "Hello Ana! I am your English tutor. How are you today?"
    )


def test_the_memory_section_is_read_up_to_the_next_heading() -> None:
    instructions = "# Always\n- Be kind.\n" + MEMORY + "# Then\n- Not memory.\n"
    assert remembered(instructions) == (
        "Ana", ["You told me about your dog Max.", "New words: favourite (the one you like best)."]
    )
    assert remembered(PROMPT) is None
    assert remembered("# What you remember about Ana\nno bullets here\n") is None

