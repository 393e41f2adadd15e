"""The simulator's options: how (and whether) it misbehaves the way the real API can."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ResponseFault = Literal["none", "failed", "cancelled", "incomplete", "empty"]

SESSION_SECONDS = 3600  # the real API's maximum session length


@dataclass(frozen=True)
class SimulatorBehaviour:
    """How the simulator misbehaves (or not). The defaults are a healthy, fast upstream."""

    response_fault: ResponseFault = "none"
    fault_times: int | None = 1  # how many responses, from the first, get the fault; None = every one
    failed_code: str = "server_error"  # status_details.error.code of a failed response
    cut_after_deltas: int | None = None  # close 1011 after this many audio deltas of the first response
    never_update: bool = False  # never answer session.update
    never_create: bool = False  # swallow response.create: no response.created ever
    refuse_handshake: int | None = None  # answer the HTTP handshake with this status and a JSON error
    event_delay_ms: float = 0  # delay before every server event (a slow upstream)
    audio_pace: float = 4.0  # audio sent this many times faster than real time; 0 = as fast as possible
    vad: bool = True  # energy VAD on appended audio, honouring the session's turn_detection
    session_seconds: float = SESSION_SECONDS  # then error session_expired and close 1000, like the real API

    def fault_for(self, response_number: int) -> ResponseFault:
        """The fault of the `response_number`-th response of a connection (counted from 1)."""
        if self.fault_times is None or response_number <= self.fault_times:
            return self.response_fault
        return "none"
