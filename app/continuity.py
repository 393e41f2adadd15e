"""What lets a lesson outlive its connections, as plain values the lesson machine keeps (no I/O, no clock).

- `Transcript`: the conversation so far, turn by turn, to give back to a page that was away or reloaded and
  to tell a renewed upstream session (bounded, in its instructions, by `app.prompts.continued_instructions`).
- `CarriedOver`: what a lesson brings from the instance that handed it over (read from the store).
- The rules of replacing the upstream session: how many attempts, how long between them, which refusals
  cannot succeed, and when a session is rolled over before its cap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from app import messages
from app.messages import Role
from app.prompts import PastTurn

# A lost upstream gets a new session at once, and one more attempt after a pause; then the lesson ends.
MAX_RECONNECT_ATTEMPTS = 2
RECONNECT_BACKOFF_S = 1.0
# Refusals no new attempt can cure: the lesson ends as it would have without one (the page codes of errors.py).
UNRETRYABLE_CODES = frozenset({"upstream_auth", "insufficient_quota", "upstream_refused"})
# The upstream's session lasts until `expires_at` (60 minutes): it is replaced at a turn boundary once this
# share of its lifetime is over (55 of 60 minutes), and at 55 minutes when it names no expiry.
ROLL_OVER_SHARE = 55 / 60
DEFAULT_ROLL_OVER_S = 55 * 60.0
# While a roll-over is due but the tutor speaks or the student does, the boundary is looked for this often.
ROLL_OVER_RECHECK_S = 0.25


def roll_over_after_s(expires_in_s: float | None) -> float:
    """How long after `session.created` its session is rolled over, given how long it said it lasts."""
    if expires_in_s is None or expires_in_s <= 0:
        return DEFAULT_ROLL_OVER_S
    return expires_in_s * ROLL_OVER_SHARE


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    seq: int  # the turn's number: the order turns began in
    role: Role
    item_id: str
    text: str
    cut: bool = False  # a tutor turn cut short: `text` is what the student heard of it


@dataclass(frozen=True, slots=True)
class CarriedOver:
    """A lesson taken over from another instance: how long it has run, its turns and what it has used so far."""

    elapsed_s: float
    turns: Sequence[TranscriptLine]
    tokens: Mapping[str, int]  # the token counts as the records keep them (`LessonUsage.carry` takes them)
    # Whether the tutor had spoken: the new session then does not greet.
    greeted: bool
    # Left by an instance that stopped answering, rather than handed over by one that was stopping.
    from_lost_instance: bool = False


@dataclass(slots=True)
class Transcript:
    """Finished turns in the order they finished; `seq` gives the order they began in. A tutor turn cut short
    keeps its place, with only what the student heard of it."""

    lines: list[TranscriptLine] = field(default_factory=list)
    # Lines cut since `forget_cuts()` (the page left): a page that comes back gets them again, marked.
    cut_lines: set[int] = field(default_factory=set)

    def add(self, seq: int, role: Role, item_id: str, text: str, *, cut: bool = False) -> None:
        """A finished turn; `cut`: a tutor turn cut short, `text` being what the student heard of it."""
        if text.strip():
            self.lines.append(TranscriptLine(seq, role, item_id, text, cut=cut))

    def text_of(self, item_id: str) -> str:
        """The text of the tutor turn of `item_id`, or "" when it has no line."""
        return next((line.text for line in self.lines if line.item_id == item_id and line.role == "tutor"), "")

    def cut(self, item_id: str, heard: Callable[[str], str]) -> TranscriptLine | None:
        """The tutor turn of `item_id` was cut short: its text becomes `heard(text)`. The cut line, or None
        when the turn has no line (it had no words yet)."""
        for index, line in enumerate(self.lines):
            if line.item_id == item_id and line.role == "tutor":
                self.lines[index] = TranscriptLine(line.seq, line.role, item_id, heard(line.text), cut=True)
                self.cut_lines.add(index)
                return self.lines[index]
        return None

    def forget_cuts(self) -> None:
        self.cut_lines.clear()

    def frames(self, since: int = 0) -> list[dict[str, object]]:
        """`transcript.done` frames: every turn in the order they began (`since` 0), or those finished since
        the first `since` in the order they finished, after the earlier ones cut since `forget_cuts()`."""
        if since == 0:
            lines = sorted(self.lines, key=lambda line: line.seq)
        else:
            lines = [self.lines[index] for index in sorted(self.cut_lines) if index < since] + self.lines[since:]
        return [line_frame(line) for line in lines]

    def past_turns(self) -> list[PastTurn]:
        return [PastTurn(line.role, line.text, line.cut) for line in sorted(self.lines, key=lambda line: line.seq)
                if line.text.strip()]


def line_frame(line: TranscriptLine) -> dict[str, object]:
    """The `transcript.done` frame of a finished turn; a cut one says it was `interrupted`."""
    return messages.transcript_done(role=line.role, item_id=line.item_id, text=line.text, interrupted=line.cut)
