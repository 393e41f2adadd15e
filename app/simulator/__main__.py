"""python -m app.simulator --port 8765: run the Realtime simulator alone until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
from pathlib import Path

from app.logging import configure_logging, stop_on_configuration_error
from app.settings import ConfigurationError, load_settings
from app.simulator.behaviour import SESSION_SECONDS, SimulatorBehaviour
from app.simulator.server import RealtimeSimulator

DESCRIPTION = "A protocol-faithful OpenAI Realtime (GA) server: the offline demo backend and the tests' upstream."


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {value!r}")
    return int(value)


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {value!r}")
    return seconds


def _delay_ms(value: str) -> float:
    try:
        delay = float(value)
    except ValueError:
        delay = math.nan
    if not delay >= 0 or math.isinf(delay):
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds, 0 or more, got {value!r}")
    return delay


def _fault_times(value: str) -> int | None:
    if value == "always":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number or 'always', got {value!r}")
    return int(value)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.simulator", description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--record-dir", type=Path, help="write appended audio to DIR/connection-<n>.pcm")
    parser.add_argument("--fault", choices=["failed", "cancelled", "incomplete", "empty"])
    parser.add_argument("--fault-times", type=_fault_times, default=1, help="a number of responses, or 'always'")
    parser.add_argument("--failed-code", default="server_error")
    parser.add_argument("--refuse-handshake", type=int, metavar="STATUS")
    parser.add_argument("--event-delay-ms", type=_delay_ms, default=0.0)
    parser.add_argument("--audio-pace", type=float, default=4.0)
    parser.add_argument("--session-seconds", type=_positive_seconds, default=SESSION_SECONDS,
                        help="then error session_expired and close 1001, like the real API at 60 minutes")
    parser.add_argument("--feedback-fault", choices=["never", "failed", "invalid_json", "incomplete"])
    parser.add_argument("--feedback-delay-ms", type=_delay_ms, default=0.0,
                        help="a feedback answer starts this long after its response.created")
    parser.add_argument("--cut-after-deltas", type=_positive_int, metavar="N",
                        help="end the connection after N output deltas of a response")
    parser.add_argument("--cut-response", type=_positive_int, default=1, metavar="N",
                        help="which response of a connection is cut (default the first)")
    parser.add_argument("--cut-connection", type=_positive_int, metavar="N",
                        help="cut only the N-th connection (default every one)")
    parser.add_argument("--cut-how", choices=["close", "drop"], default="close",
                        help="close 1011, or drop the TCP connection with no close frame")
    return parser.parse_args(argv)


async def _serve_forever(arguments: argparse.Namespace) -> None:
    behaviour = SimulatorBehaviour(
        response_fault=arguments.fault or "none",
        fault_times=arguments.fault_times,
        failed_code=arguments.failed_code,
        refuse_handshake=arguments.refuse_handshake,
        event_delay_ms=arguments.event_delay_ms,
        audio_pace=arguments.audio_pace,
        session_seconds=arguments.session_seconds,
        feedback_fault=arguments.feedback_fault or "none",
        feedback_delay_ms=arguments.feedback_delay_ms,
        cut_after_deltas=arguments.cut_after_deltas,
        cut_response=arguments.cut_response,
        cut_connection=arguments.cut_connection,
        cut_how=arguments.cut_how,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    simulator = RealtimeSimulator(behaviour, record_dir=arguments.record_dir)
    await simulator.start(arguments.host, arguments.port)
    try:
        # The one line a wrapper script or test reads to find the server.
        sys.stdout.write(f"Realtime simulator listening on {simulator.url}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until SIGINT or SIGTERM, logging like the app (LOG_LEVEL, LOG_FORMAT)."""
    arguments = _parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as error:
        stop_on_configuration_error(error)
    configure_logging(settings)
    asyncio.run(_serve_forever(arguments))


if __name__ == "__main__":
    main()
