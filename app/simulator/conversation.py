"""The conversation a connection has built: its items in order, and what the token counts need of it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from app.simulator.validation import ClientEventError, check_type, expect_keys, expect_object, invalid_value
from app.simulator.wire import JsonObject, new_id


def text_tokens(text: str) -> int:
    """About as many tokens as the real tokeniser counts for English text (four characters a token)."""
    return max(1, round(len(text) / 4))


def _named_item(event: JsonObject) -> str:
    """The `item_id` a conversation.item.retrieve/delete/truncate names."""
    item_id = event.get("item_id")
    if not isinstance(item_id, str):
        raise ClientEventError("missing_required_parameter", "Missing required parameter: 'item_id'.", param="item_id")
    return item_id


@dataclass
class _ItemShare:
    """What one item adds to the conversation's counts: taken away again when the item is deleted."""

    text_tokens: int = 0
    audio_ms: int = 0
    spoken: bool = False  # an assistant reply that said something (counted in `turns_spoken`)


@dataclass
class Conversation:
    """One connection's conversation (the default one; out-of-band responses are not added to it)."""

    id: str = field(default_factory=lambda: new_id("conv"))
    items: dict[str, JsonObject] = field(default_factory=dict)  # in order
    item_audio_ms: dict[str, int] = field(default_factory=dict)  # assistant audio sent per item, for truncate
    # Assistant words per item: (where each starts in the item's audio, in ms; its text), in the order said.
    item_words: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    truncated_ms: dict[str, int] = field(default_factory=dict)  # assistant items truncated, at their audio_end_ms
    turns_spoken: int = 0  # responses that said something: a failed greeting is greeted again
    assistant_audio_sent: bool = False  # the voice is fixed once audio was produced
    audio_ms: int = 0  # input audio in the context (assistant audio counted twice: it costs about double)
    text_tokens: int = 0
    previous_input_tokens: int = 0  # of the last response, for the cached-token estimate
    shares: dict[str, _ItemShare] = field(default_factory=dict)  # by item id

    def count(self, item_id: str, *, text_tokens: int = 0, audio_ms: int = 0, spoken: bool = False) -> None:
        """Item `item_id` adds these to the context (and, `spoken`, a tutor turn said) until it is deleted."""
        share = self.shares.setdefault(item_id, _ItemShare())
        share.text_tokens += text_tokens
        share.audio_ms += audio_ms
        share.spoken = share.spoken or spoken
        self.text_tokens += text_tokens
        self.audio_ms += audio_ms
        self.turns_spoken += int(spoken)

    def last_item_id(self) -> str | None:
        """The `previous_item_id` of an item appended now."""
        return next(reversed(self.items), None)

    def retrieve(self, event: JsonObject) -> JsonObject:
        """The item a conversation.item.retrieve names."""
        item_id = _named_item(event)
        item = self.items.get(item_id)
        if item is None:
            # The real API's refusal, as its clients report it (README, "How close the simulator is to the real API").
            raise ClientEventError("item_retrieve_invalid_item_id",
                                   f"Error retrieving item: the item with id {item_id!r} does not exist.")
        return item

    def create_item(self, event: JsonObject) -> tuple[str | None, JsonObject]:
        """Add a conversation.item.create's message; (its previous_item_id, the item as the server shows it)."""
        item = copy.deepcopy(expect_object(event.get("item"), "item"))
        if item.get("type") != "message" or item.get("role") not in ("user", "assistant", "system"):
            raise ClientEventError(
                "invalid_value", "Only message items (user, assistant or system) are simulated.", param="item.type"
            )
        content = item.get("content")
        if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
            raise ClientEventError(
                "invalid_type", "Invalid type for 'item.content': expected an array.", param="item.content"
            )
        expect_keys(item, frozenset({"id", "type", "role", "content", "status", "object"}), "item")
        item_id = item.setdefault("id", new_id("item"))
        if item_id in self.items:
            raise ClientEventError("invalid_value", f"Item with id {item_id!r} already exists.", param="item.id")
        previous_item_id = event.get("previous_item_id")
        if previous_item_id is not None and previous_item_id not in self.items:
            raise ClientEventError("item_create_invalid_previous_item_id",
                                   f"Error adding item: the previous item with id {previous_item_id!r} does not exist.")
        item.update(status="completed", object="realtime.item")
        previous_item_id = previous_item_id or self.last_item_id()
        self.items[item_id] = item
        self.count(item_id, text_tokens=sum(text_tokens(str(part.get("text") or "")) for part in content))
        return previous_item_id, item

    def delete(self, event: JsonObject) -> str:
        """Carry out a conversation.item.delete: the item leaves the conversation, and with it what it added to
        the context, so no later response (the feedback included) sees it. The deleted item's id."""
        item_id = _named_item(event)
        if item_id not in self.items:
            raise ClientEventError("item_delete_invalid_item_id",
                                   f"Error deleting item: the item with id {item_id!r} does not exist.")
        del self.items[item_id]
        for per_item in (self.item_audio_ms, self.item_words, self.truncated_ms):
            per_item.pop(item_id, None)
        share = self.shares.pop(item_id, _ItemShare())
        self.text_tokens -= share.text_tokens
        self.audio_ms -= share.audio_ms
        self.turns_spoken -= int(share.spoken)
        return item_id

    def truncate(self, event: JsonObject) -> JsonObject:
        """Check a conversation.item.truncate; the fields of the conversation.item.truncated that answers it."""
        item_id = _named_item(event)
        item = self.items.get(item_id)
        if item is None:
            raise ClientEventError("item_truncate_invalid_item_id", f"Item with item_id not found: {item_id}")
        content_index = event.get("content_index")
        audio_end_ms = event.get("audio_end_ms")
        check_type(content_index, int, "content_index")
        check_type(audio_end_ms, int, "audio_end_ms")
        assert isinstance(content_index, int)
        assert isinstance(audio_end_ms, int)
        if item["id"] not in self.item_audio_ms:
            raise ClientEventError("unsupported_content_type", "Only model output audio messages can be truncated")
        if content_index != 0:
            raise invalid_value("content_index", content_index, "0")
        if audio_end_ms < 0:
            raise invalid_value("audio_end_ms", audio_end_ms, "a non-negative integer")
        sent_ms = self.item_audio_ms[item["id"]]
        if audio_end_ms > sent_ms:
            raise ClientEventError(
                "invalid_value", f"Audio content of {sent_ms}ms is already shorter than {audio_end_ms}ms",
                param="audio_end_ms",
            )
        self.truncated_ms[item["id"]] = audio_end_ms
        return {"item_id": item["id"], "content_index": content_index, "audio_end_ms": audio_end_ms}

    def context_items(self) -> list[JsonObject]:
        """The items as the model has them in its context. The real API deletes a truncated item's transcript and
        keeps its audio up to `audio_end_ms`, so no word the user did not hear stays in the context; the
        simulator, which reads words rather than audio, keeps the words whose audio starts before that point."""
        return [self._as_heard(item) for item in self.items.values()]

    def _as_heard(self, item: JsonObject) -> JsonObject:
        end_ms = self.truncated_ms.get(item["id"])
        if end_ms is None:
            return item
        heard = "".join(text for start_ms, text in self.item_words.get(item["id"], []) if start_ms < end_ms)
        return {**item, "content": [{"type": "output_audio", "transcript": heard.strip()}]}
