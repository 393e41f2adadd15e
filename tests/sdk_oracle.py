"""The official `openai` SDK's Realtime event models as a conformance oracle for tests.

    from sdk_oracle import assert_valid_server_event, assert_valid_client_event   # pytest puts tests/ on sys.path
    from tests.sdk_oracle import ...                                               # from the repository root

Each function validates one event (a parsed JSON dict) against the SDK's GA models through a real
`type` discriminator, and then fails on any field the models do not know, anywhere in the event. The
SDK models accept unknown fields (`extra="allow"`), so without that walk a beta-shaped event such as
`session.update` with `session.modalities` would pass.

Known fields the GA server sends that the SDK's models lack, and which are therefore allowed:
- `obfuscation` on `response.output_audio_transcript.delta` / `response.output_text.delta`;
- `id`, `object` and `expires_at` on the `session` of `session.created` / `session.updated`: the SDK
  types that session as `RealtimeSessionCreateRequest`, but the server sends the session resource;
  those three fields are checked against `RealtimeSessionCreateResponse`, which declares them.

Only the tests import this module (and with it `openai`); the app never does.
"""

from __future__ import annotations

from typing import Annotated, Any, Union, get_args

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent, RealtimeSessionCreateResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

__all__ = ["assert_valid_client_event", "assert_valid_server_event"]

_SESSION_RESOURCE_FIELDS = frozenset({"id", "object", "expires_at"})
_OBFUSCATED_DELTAS = frozenset({"response.output_audio_transcript.delta", "response.output_text.delta"})


def _discriminated(sdk_union: Any) -> TypeAdapter[Any]:
    # The SDK marks its unions with its own PropertyInfo(discriminator=...), which pydantic ignores;
    # without a real discriminator pydantic tries every member and reports a wall of errors.
    members = get_args(get_args(sdk_union)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # noqa: UP007


_CLIENT_EVENTS = _discriminated(RealtimeClientEvent)
_SERVER_EVENTS = _discriminated(RealtimeServerEvent)
_SESSION_RESOURCE = TypeAdapter(RealtimeSessionCreateResponse)


def assert_valid_server_event(event: dict[str, Any]) -> BaseModel:
    """The SDK model of `event`; AssertionError when it is not a valid GA server event."""
    model = _validate(_SERVER_EVENTS, event, "server")
    allowed: set[str] = set()
    if event.get("type") in _OBFUSCATED_DELTAS:
        allowed.add("obfuscation")
    session_extras: set[str] = set()
    if event.get("type") in ("session.created", "session.updated"):
        session_extras = set(_SESSION_RESOURCE_FIELDS)
        _check_session_resource_fields(event)
    unknown = _unknown_fields(model, "", allowed_here=allowed, allowed_in_session=session_extras)
    assert not unknown, f"{event.get('type')!r} has fields the GA models do not know: {', '.join(unknown)}"
    return model


def assert_valid_client_event(event: dict[str, Any]) -> BaseModel:
    """The SDK model of `event`; AssertionError when it is not a valid GA client event."""
    model = _validate(_CLIENT_EVENTS, event, "client")
    unknown = _unknown_fields(model, "", allowed_here=set(), allowed_in_session=set())
    assert not unknown, f"{event.get('type')!r} has fields the GA models do not know: {', '.join(unknown)}"
    return model


def _validate(adapter: TypeAdapter[Any], event: dict[str, Any], side: str) -> BaseModel:
    try:
        model = adapter.validate_python(event)
    except ValidationError as exc:
        raise AssertionError(f"not a valid GA {side} event ({event.get('type')!r}):\n{exc}") from None
    assert isinstance(model, BaseModel)
    return model


def _check_session_resource_fields(event: dict[str, Any]) -> None:
    session = event.get("session")
    assert isinstance(session, dict), "session.created/updated without a session object"
    present = {key: session[key] for key in _SESSION_RESOURCE_FIELDS if key in session}
    if present:
        try:
            _SESSION_RESOURCE.validate_python({"type": session.get("type"), **present})
        except ValidationError as exc:
            raise AssertionError(f"session resource fields {sorted(present)} are invalid:\n{exc}") from None


def _unknown_fields(value: object, path: str, *, allowed_here: set[str], allowed_in_session: set[str]) -> list[str]:
    """Dotted paths of every `model_extra` key in the validated tree under `value`."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        for key in value.model_extra or {}:
            if key not in allowed_here:
                found.append(f"{path}{key}")
        for name in type(value).model_fields:
            child = getattr(value, name)
            found += _unknown_fields(
                child,
                f"{path}{name}.",
                allowed_here=allowed_in_session if name == "session" and not path else set(),
                allowed_in_session=set(),
            )
    elif isinstance(value, list | tuple):
        for index, child in enumerate(value):
            found += _unknown_fields(child, f"{path}{index}.", allowed_here=set(), allowed_in_session=set())
    elif isinstance(value, dict):
        for key, child in value.items():
            found += _unknown_fields(child, f"{path}{key}.", allowed_here=set(), allowed_in_session=set())
    return found
