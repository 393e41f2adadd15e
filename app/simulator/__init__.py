"""A protocol-faithful OpenAI Realtime (GA) server: the offline demo backend and the tests' upstream.

    python -m app.simulator --port 8765 [--fault failed] [--record-dir DIR] ...

It speaks the GA WebSocket interface at /v1/realtime: session.created on connect, strict
session.update validation (beta field names are refused like the real API refuses them), the full
response event sequence with speech-like audio paced faster than real time, cancellation, truncation,
an energy VAD on appended audio, and the failure modes a relay must survive (SimulatorBehaviour).

One concern per module:
- server: the HTTP handshake and the listening server (RealtimeSimulator);
- connection: one connection's event loop, session, conversation items and ordered sending;
- validation: client events checked the way the GA API refuses them;
- session_config: the default session and how session.update changes it;
- responses: response event sequences (in the conversation and out of band), usage and faults;
- turns: the energy VAD that finds the student's turns;
- tutor: what the simulated tutor says (and its welcome back, when the instructions carry memory);
- feedback: the lesson feedback JSON an out-of-band request with metadata purpose "feedback" gets;
- voice: the speech-like synthesiser behind the tutor's audio.

Every server event validates against the official SDK's server-event models (tests/sdk_oracle.py).
"""

from __future__ import annotations

from app.simulator.behaviour import SESSION_SECONDS, CutHow, FeedbackFault, ResponseFault, SimulatorBehaviour
from app.simulator.connection import SimulatedConnection
from app.simulator.feedback import FEEDBACK_PURPOSE, lesson_feedback
from app.simulator.server import HANDSHAKE_ERRORS, RealtimeSimulator
from app.simulator.session_config import default_session, merge_session
from app.simulator.turns import pcm16_rms, vad_rms_threshold
from app.simulator.tutor import remembered, tutor_facts, tutor_text
from app.simulator.validation import ClientEventError, validate_response_params, validate_session
from app.simulator.wire import JsonObject, new_id

__all__ = [
    "FEEDBACK_PURPOSE",
    "HANDSHAKE_ERRORS",
    "SESSION_SECONDS",
    "ClientEventError",
    "CutHow",
    "FeedbackFault",
    "JsonObject",
    "RealtimeSimulator",
    "ResponseFault",
    "SimulatedConnection",
    "SimulatorBehaviour",
    "default_session",
    "lesson_feedback",
    "merge_session",
    "new_id",
    "pcm16_rms",
    "remembered",
    "tutor_facts",
    "tutor_text",
    "vad_rms_threshold",
    "validate_response_params",
    "validate_session",
]
