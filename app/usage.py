"""A lesson's token usage, added up from every `response.done`, and its estimated cost.

The cost only grows: each response's cached tokens are taken off that response's own input (as its
`cached_tokens_details` split them, or off its audio first when it does not say), so a later response can
never reprice what an earlier one was charged. The records keep that split, so a lesson taken over by another
instance is priced there as it was here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app import protocol


@dataclass(slots=True)
class LessonUsage:
    responses: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    text_input_tokens: int = 0
    audio_input_tokens: int = 0
    cached_tokens: int = 0
    cached_audio_tokens: int = 0  # of cached_tokens, those taken off the audio input
    cached_text_tokens: int = 0  # … and off the text input
    text_output_tokens: int = 0
    audio_output_tokens: int = 0

    def add(self, usage: protocol.Usage | None) -> None:
        self.responses += 1
        if usage is None:
            return
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        if details := usage.input_token_details:
            self.text_input_tokens += details.text_tokens
            self.audio_input_tokens += details.audio_tokens
            self.cached_tokens += details.cached_tokens
            split = details.cached_tokens_details
            cached_audio = min(split.audio_tokens if split else details.cached_tokens, details.audio_tokens)
            cached_text = split.text_tokens if split else details.cached_tokens - cached_audio
            self.cached_audio_tokens += cached_audio
            self.cached_text_tokens += min(cached_text, details.text_tokens)
        if out := usage.output_token_details:
            self.text_output_tokens += out.text_tokens
            self.audio_output_tokens += out.audio_tokens

    def carry(self, tokens: Mapping[str, int]) -> None:
        """Start from what the lesson used on the instance that handed it over (`recorded_counts`'s counts), its
        responses included (none known for a lesson recorded before they were kept).

        A lesson recorded before the cached split was kept has no `cached_audio_tokens`/`cached_text_tokens`: its
        cached tokens are then taken off the text input first. Text input is priced below audio input (by OpenAI
        and by default), so its estimate may grow by the difference but never drops below what it was."""
        self.responses = tokens.get("responses", 0)
        self.audio_input_tokens = tokens.get("audio_input_tokens", 0)
        self.text_input_tokens = tokens.get("text_input_tokens", 0)
        self.cached_tokens = tokens.get("cached_tokens", 0)
        cached_audio, cached_text = tokens.get("cached_audio_tokens"), tokens.get("cached_text_tokens")
        if cached_audio is not None and cached_text is not None:
            self.cached_audio_tokens, self.cached_text_tokens = cached_audio, cached_text
        else:
            self.cached_text_tokens = min(self.cached_tokens, self.text_input_tokens)
            self.cached_audio_tokens = min(self.cached_tokens - self.cached_text_tokens, self.audio_input_tokens)
        self.audio_output_tokens = tokens.get("audio_output_tokens", 0)
        self.text_output_tokens = tokens.get("text_output_tokens", 0)
        self.input_tokens = self.audio_input_tokens + self.text_input_tokens
        self.output_tokens = self.audio_output_tokens + self.text_output_tokens

    def tokens_by_kind(self) -> dict[str, int]:
        """The five counts the cost is made of, named as the records and the page's `usage` frame name them."""
        return {
            "audio_input_tokens": self.audio_input_tokens, "audio_output_tokens": self.audio_output_tokens,
            "text_input_tokens": self.text_input_tokens, "text_output_tokens": self.text_output_tokens,
            "cached_tokens": self.cached_tokens,
        }

    def recorded_counts(self) -> dict[str, int]:
        """What the records keep: the five counts by kind, which input the cached tokens were taken off, and the
        responses."""
        return {**self.tokens_by_kind(), "cached_audio_tokens": self.cached_audio_tokens,
                "cached_text_tokens": self.cached_text_tokens, "responses": self.responses}

    def totals(self) -> dict[str, int]:
        """Every count: responses, input and output tokens, and the counts by kind."""
        return {"responses": self.responses, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                **self.tokens_by_kind()}

    def cost_usd(self, prices: Mapping[str, float]) -> float:
        # Cached tokens are billed at the cached rate instead of the input rate they were taken off.
        per_token = {kind: price / 1_000_000 for kind, price in prices.items()}
        return round(
            (self.audio_input_tokens - self.cached_audio_tokens) * per_token.get("audio_input", 0)
            + (self.text_input_tokens - self.cached_text_tokens) * per_token.get("text_input", 0)
            + self.cached_tokens * per_token.get("cached", 0)
            + self.audio_output_tokens * per_token.get("audio_output", 0)
            + self.text_output_tokens * per_token.get("text_output", 0),
            6,
        )
