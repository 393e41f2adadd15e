"""The simulator's options: how (and whether) it misbehaves the way the real API can."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ResponseFault = Literal["none", "failed", "cancelled", "incomplete", "empty"]
# How a lesson-feedback request (metadata purpose "feedback") goes wrong: no answer at all, a failed
# response, prose instead of JSON, or JSON cut off at max_output_tokens (status incomplete).
FeedbackFault = Literal["none", "never", "failed", "invalid_json", "incomplete"]
# How a cut ends the connection: a close frame 1011 (a server error), or the TCP connection just ends (1006).
CutHow = Literal["close", "drop"]

SESSION_SECONDS = 3600  # the real API's maximum session length


@dataclass(frozen=True)
class SimulatorBehaviour:
    """How the simulator misbehaves (or not). The defaults are a healthy, fast upstream."""

    response_fault: ResponseFault = "none"
    fault_times: int | None = 1  # how many responses, from the first, get the fault; None = every one
    failed_code: str = "server_error"  # status_details.error.code of a failed response
    cut_after_deltas: int | None = None  # end the connection after this many output deltas (audio or text) ...
    cut_response: int = 1  # ... of this response of a connection (counted from 1) ...
    cut_connection: int | None = None  # ... on this connection of the simulator (from 1; None = every one) ...
    cut_how: CutHow = "close"  # ... with close 1011, or by dropping the TCP connection (the client sees 1006)
    never_update: bool = False  # never answer session.update
    never_create: bool = False  # swallow response.create: no response.created ever
    refuse_handshake: int | None = None  # answer the HTTP handshake with this status and a JSON error
    event_delay_ms: float = 0  # delay before every server event (a slow upstream)
    audio_pace: float = 4.0  # audio sent this many times faster than real time; 0 = as fast as possible
    vad: bool = True  # energy VAD on appended audio, honouring the session's turn_detection
    session_seconds: float = SESSION_SECONDS  # then error session_expired and close 1001, like the real API
    feedback_fault: FeedbackFault = "none"
    feedback_delay_ms: float = 0  # a feedback answer starts this long after its response.created (a model writing)

    def fault_for(self, response_number: int) -> ResponseFault:
        """The fault of the `response_number`-th response of a connection (counted from 1)."""
        if self.fault_times is None or response_number <= self.fault_times:
            return self.response_fault
        return "none"

    def cuts(self, connection_number: int, response_number: int) -> int | None:
        """After how many output deltas the given response of the given connection ends the connection."""
        if self.cut_connection is not None and connection_number != self.cut_connection:
            return None
        return self.cut_after_deltas if response_number == self.cut_response else None
