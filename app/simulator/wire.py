"""What every module of the simulator shares about the wire: JSON events and the ids the real API uses."""

from __future__ import annotations

import uuid
from typing import Any

JsonObject = dict[str, Any]


def new_id(prefix: str) -> str:
    """An id shaped like the real API's (`event_…`, `sess_…`, `resp_…`, `item_…`, `conv_…`)."""
    return f"{prefix}_{uuid.uuid4().hex[:21]}"
