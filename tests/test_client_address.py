"""Issue 10.2 over real sockets: the address a lesson is counted against is the real one.

X-Forwarded-For is believed only from the proxies in FORWARDED_ALLOW_IPS. The test client connects from
127.0.0.1: with the default (loopback trusted) it plays the proxy; with another proxy configured it plays
a client writing the header itself.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from harness import log_lines, open_lesson, relay_settings, serve_app
from pydantic import ValidationError

from app.logging import MAX_QUOTED_CHARS, quoted
from app.settings import Settings
from app.simulator import RealtimeSimulator


async def start(url: str, forwarded_for: str) -> dict[str, Any]:
    """One lesson start with this X-Forwarded-For; the first frame that says admitted or refused."""
    async with open_lesson(url, additional_headers={"X-Forwarded-For": forwarded_for}) as page:
        first = await page.until(lambda m: m["type"] in ("lesson", "error"))
        await page.ws.close()
    return first


def counted_as(stream: io.StringIO) -> list[str]:
    return [line["client"] for line in log_lines(stream) if line["event"] in ("lesson_started", "lesson_refused")]


async def test_a_forged_x_forwarded_for_from_a_client_changes_nothing(
    simulator: RealtimeSimulator, log_stream: io.StringIO,
) -> None:
    # The only trusted proxy is elsewhere: 127.0.0.1 is a client, and its header is ignored.
    settings = relay_settings(simulator.url, lesson_starts_per_minute=2, forwarded_allow_ips="10.20.30.40")
    async with serve_app(settings, log_stream) as relay:
        outcomes = [await start(relay.lesson_url(name="Ana"), f"198.51.100.{n}") for n in (1, 2, 3)]
    assert [outcome["type"] for outcome in outcomes] == ["lesson", "lesson", "error"]
    assert outcomes[2]["code"] == "over_capacity"
    assert counted_as(log_stream) == ["127.0.0.1"] * 3


async def test_behind_a_trusted_proxy_the_client_is_the_address_the_proxy_saw(
    simulator: RealtimeSimulator, log_stream: io.StringIO,
) -> None:
    # Loopback is the default trusted proxy. A client may prepend anything to the header; the proxy appends
    # the address it saw, and that rightmost untrusted address is the one counted.
    settings = relay_settings(simulator.url, lesson_starts_per_minute=1)
    async with serve_app(settings, log_stream) as relay:
        first = await start(relay.lesson_url(name="Ana"), "203.0.113.7")
        forged = await start(relay.lesson_url(name="Ana"), "192.0.2.99, 203.0.113.7")
        other = await start(relay.lesson_url(name="Ben"), "203.0.113.8")
    assert (first["type"], forged["type"], other["type"]) == ("lesson", "error", "lesson")
    assert counted_as(log_stream) == ["203.0.113.7", "203.0.113.7", "203.0.113.8"]


async def test_trusting_every_peer_warns_at_start(simulator: RealtimeSimulator, log_stream: io.StringIO) -> None:
    async with serve_app(relay_settings(simulator.url), log_stream):
        pass
    async with serve_app(relay_settings(simulator.url, forwarded_allow_ips=" * "), log_stream):
        pass
    [warning] = [line for line in log_lines(log_stream) if line["event"] == "client_address_chosen_by_client"]
    assert warning["level"] == "warning"
    assert "FORWARDED_ALLOW_IPS is *" in warning["message"]


async def test_an_address_a_client_writes_is_quoted_at_most_max_quoted_chars_everywhere(
    simulator: RealtimeSimulator, log_stream: io.StringIO,
) -> None:
    # With every peer trusted the client's own X-Forwarded-For entry is its address: up to a header line's 8 KiB
    # of anything.
    written = "203.0.113.7" + "x" * 8_000
    bounded = written[:MAX_QUOTED_CHARS - 1] + "\u2026"
    settings = relay_settings(simulator.url, forwarded_allow_ips="*", teacher_password="correct-horse-battery")
    async with serve_app(settings, log_stream) as relay:
        assert (await start(relay.lesson_url(name="Ana"), written))["type"] == "lesson"
        async with httpx.AsyncClient(base_url=relay.base_url) as http:
            await http.get("/healthz", headers={"X-Forwarded-For": written})
            wrong = await http.post("/api/students", headers={"X-Forwarded-For": written,
                                                             "Authorization": "Bearer not-the-password"})
    assert wrong.status_code == 401
    assert counted_as(log_stream) == [bounded]
    [refused] = [line for line in log_lines(log_stream) if line["event"] == "teacher_api_refused"]
    assert refused["client"] == bounded
    # uvicorn's own lines (the WebSocket's and the access log's) quote the same bounded address.
    assert "x" * MAX_QUOTED_CHARS not in log_stream.getvalue()
    assert any(bounded in line.get("event", "") for line in log_lines(log_stream) if "GET /healthz" in line["event"])


def test_quoted_keeps_short_text_and_cuts_long_text_to_max_quoted_chars() -> None:
    assert quoted("2001:db8::1") == "2001:db8::1"
    assert quoted("a" * MAX_QUOTED_CHARS) == "a" * MAX_QUOTED_CHARS
    assert quoted("a" * (MAX_QUOTED_CHARS + 1)) == "a" * (MAX_QUOTED_CHARS - 1) + "\u2026"


def test_forwarded_allow_ips_defaults_to_loopback_and_takes_addresses_and_networks() -> None:
    assert Settings().forwarded_allow_ips == "127.0.0.1"
    assert Settings(forwarded_allow_ips=" 100.64.0.0/10, ::1 ").forwarded_allow_ips == "100.64.0.0/10,::1"


@pytest.mark.parametrize("value", ["railway", "100.64.0.0/33", "10.0.0.1;10.0.0.2"])
def test_forwarded_allow_ips_that_are_not_addresses_are_refused_naming_the_entry(value: str) -> None:
    with pytest.raises(ValidationError, match="is not an IP address or network"):
        Settings(forwarded_allow_ips=value)


async def test_an_ipv6_client_is_counted_by_its_network_not_by_each_of_its_addresses(
    simulator: RealtimeSimulator, log_stream: io.StringIO,
) -> None:
    # One IPv6 client holds a whole /64: a new address for every start must not mean a new allowance.
    settings = relay_settings(simulator.url, lesson_starts_per_minute=1)
    async with serve_app(settings, log_stream) as relay:
        first = await start(relay.lesson_url(name="Ana"), "2001:db8:1:2::1")
        same_network = await start(relay.lesson_url(name="Ana"), "2001:db8:1:2::2")
        other_network = await start(relay.lesson_url(name="Ben"), "2001:db8:1:3::1")
    assert (first["type"], same_network["type"], other_network["type"]) == ("lesson", "error", "lesson")
    assert same_network["code"] == "over_capacity"
    # The log keeps each address as it is.
    assert counted_as(log_stream) == ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:3::1"]
