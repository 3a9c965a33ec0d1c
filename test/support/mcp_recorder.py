"""A tiny MCP robot server (FastMCP, streamable HTTP at /mcp) that records tool calls.

In tests:

    with McpRecorder("testbot") as bot:
        ...  # point rosa at bot.url
        bot.wait_for_calls(1, timeout=10)
        assert bot.calls[0]["tool"] == "wave"

By hand (prints each call as a JSON line on stdout, the URL on stderr):

    .rosa/ros/bin/python test/support/mcp_recorder.py --port 8765

Note: ``python -m test.support.mcp_recorder`` only works if ``test/`` is a
regular package; otherwise the stdlib ``test.support`` package shadows it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from typing import Any, Callable

import uvicorn
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings

__all__ = ["McpRecorder"]

# mcp 1.26 FastMCP turns on DNS-rebinding protection for host="127.0.0.1" and
# rejects (421) any Host header outside its allow-list. Spell the loopback
# allow-list out explicitly (with and without port) so requests addressed to
# 127.0.0.1:<port>, localhost:<port> or [::1]:<port> are always accepted.
_LOOPBACK_SECURITY = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"],
    allowed_origins=["http://127.0.0.1", "http://127.0.0.1:*", "http://localhost",
                     "http://localhost:*", "http://[::1]", "http://[::1]:*"],
)


class McpRecorder:
    """MCP server with tools wave / move_head / slow / fail, recording every call.

    ``calls`` holds ``{"t": monotonic, "wall": time.time(), "tool": name, "args": dict}``
    per call, appended before the tool does its work. ``on_call`` (optional) is
    invoked with each record too.
    """

    def __init__(self, name: str = "testbot", port: int = 0,
                 on_call: Callable[[dict], Any] | None = None):
        self.name = name
        self.calls: list[dict] = []
        self.on_call = on_call
        self._lock = threading.Lock()
        self._requested_port = port
        self.port: int | None = None  # actual port, known once bound
        self.mcp = self._build_mcp()
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "McpRecorder not started"
        return f"http://127.0.0.1:{self.port}/mcp"

    def _bind(self) -> socket.socket:
        # We bind the listening socket ourselves and hand it to uvicorn, so the
        # port is known up front and there is no pick-a-free-port race.
        self._sock = socket.create_server(("127.0.0.1", self._requested_port))
        # Accepted sockets inherit TCP_NODELAY on Linux. Without it, the last chunk of each SSE
        # response waits ~40 ms for the client's delayed ACK on a kept-alive connection.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = self._sock.getsockname()[1]
        return self._sock

    # -- recording ---------------------------------------------------------

    def _record(self, tool: str, args: dict) -> None:
        rec = {"t": time.monotonic(), "wall": time.time(), "tool": tool, "args": args}
        with self._lock:
            self.calls.append(rec)
        if self.on_call:
            self.on_call(rec)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.calls)

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()

    def wait_for_calls(self, n: int, timeout: float = 10.0) -> list[dict]:
        """Poll until at least ``n`` calls were recorded; return them."""
        deadline = time.monotonic() + timeout
        while True:
            calls = self.snapshot()
            if len(calls) >= n:
                return calls
            if time.monotonic() >= deadline:
                raise TimeoutError(f"McpRecorder({self.name}): expected >= {n} call(s) within "
                                   f"{timeout}s, got {len(calls)}: {[c['tool'] for c in calls]}")
            time.sleep(0.02)

    # -- the MCP server ----------------------------------------------------

    def _build_mcp(self) -> FastMCP:
        mcp = FastMCP(self.name, host="127.0.0.1", streamable_http_path="/mcp", transport_security=_LOOPBACK_SECURITY,
                      log_level="WARNING")
        record = self._record

        @mcp.tool()
        def wave(times: int = 1) -> str:
            """Wave the robot's arm the given number of times."""
            record("wave", {"times": times})
            return f"waved {times} times"

        @mcp.tool()
        def move_head(direction: str, degrees: float = 10.0) -> str:
            """Turn the robot's head in a direction ("left", "right", "up", "down") by some degrees."""
            record("move_head", {"direction": direction, "degrees": degrees})
            return f"moved head {direction} by {degrees} degrees"

        @mcp.tool()
        async def slow(seconds: float) -> str:
            """Do nothing for the given number of seconds (a long-running action)."""
            record("slow", {"seconds": seconds})
            await asyncio.sleep(seconds)
            return "slept"

        @mcp.tool()
        def fail(reason: str = "boom") -> str:
            """Always fail with the given reason (the client receives an error result)."""
            record("fail", {"reason": reason})
            raise RuntimeError(reason)

        return mcp

    def _make_server(self) -> uvicorn.Server:
        inner = self.mcp.streamable_http_app()

        async def app(scope, receive, send):
            # On stop(), uvicorn cancels requests still running after the grace
            # period (open SSE streams, a `slow` call); don't log those as errors.
            try:
                await inner(scope, receive, send)
            except asyncio.CancelledError:
                if not (self._server and self._server.should_exit):
                    raise

        config = uvicorn.Config(app, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=2)
        return uvicorn.Server(config)

    # -- lifecycle (background thread) ---------------------------------------

    def start(self, timeout: float = 10.0) -> "McpRecorder":
        sock = self._bind()
        self._server = self._make_server()
        # uvicorn gets its own event loop in a daemon thread; it only installs
        # signal handlers when running in the main thread.
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[sock])),
            name=f"McpRecorder-{self.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not (self._server.started and _port_open(self.port)):
            if not self._thread.is_alive():
                raise RuntimeError(f"McpRecorder({self.name}) failed to start (see log above)")
            if time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"McpRecorder({self.name}) not accepting connections after {timeout}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "McpRecorder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- foreground (CLI) ------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve in the current (main) thread until SIGINT/SIGTERM."""
        sock = self._sock or self._bind()
        try:
            self._make_server().run(sockets=[sock])
        finally:
            sock.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="MCP test robot that prints each tool call as JSON.")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    ap.add_argument("--name", default="testbot", help="MCP server name")
    args = ap.parse_args(argv)

    def print_call(rec: dict) -> None:
        print(json.dumps(rec), flush=True)

    rec = McpRecorder(args.name, port=args.port, on_call=print_call)
    rec._bind()
    print(f"McpRecorder {args.name} listening on {rec.url}", file=sys.stderr, flush=True)
    rec.serve_forever()


if __name__ == "__main__":
    main()
