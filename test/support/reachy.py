"""The real Reachy Mini daemon for tests, an MCP client, and a small emotions dataset.

    with ReachyDaemon(tmp_path) as d:          # reachy-mini-daemon --mockup-sim --headless --no-media
        d.state()                              # GET /api/state/full
    with McpClient(url) as mcp:
        mcp.call("goto_target", {"yaw": 20})   # -> (is_error, text)

The daemon runs from the venv `./rosa setup` makes (.rosa/reachy, or $ROSA_REACHY_DAEMON), on a free
loopback port, with DO_NOT_TRACK=1, its own HF_HOME and HF_HUB_OFFLINE=1 (no network here), and is
stopped (SIGINT, then SIGKILL) at the end.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
EMOTIONS = "pollen-robotics/reachy-mini-emotions-library"


def daemon_executable() -> Path:
    return Path(os.environ.get("ROSA_REACHY_DAEMON", ROOT / ".rosa" / "reachy" / "bin" / "reachy-mini-daemon"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rpy_matrix(roll=0.0, pitch=0.0, yaw=0.0, x=0.0, y=0.0, z=0.0):
    """4x4 pose, R = Rz(yaw) Ry(pitch) Rx(roll), as nested lists."""
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    return [[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr, x],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr, y],
            [-sp, cp * sr, cp * cr, z],
            [0.0, 0.0, 0.0, 1.0]]


def write_emotions(hf_home: Path, moves: dict[str, dict]) -> Path:
    """Write a recorded-moves dataset into an HF cache, as the daemon looks for it.

    ``moves`` maps a move name to ``{"yaw_deg": final head yaw, "antennas": [r, l], "seconds": length}``;
    each becomes a move from the neutral pose to that pose.
    """
    repo = hf_home / "hub" / ("datasets--" + EMOTIONS.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name, m in moves.items():
        n = 30
        seconds = m.get("seconds", 1.0)
        times, frames = [], []
        for i in range(n + 1):
            a = i / n
            times.append(a * seconds)
            frames.append({
                "head": rpy_matrix(yaw=math.radians(m["yaw_deg"]) * a),
                "antennas": [v * a for v in m.get("antennas", [0.0, 0.0])],
                "body_yaw": 0.0,
            })
        (snap / f"{name}.json").write_text(json.dumps({
            "description": f"test move {name}", "time": times, "set_target_data": frames}))
    return snap


class ReachyDaemon:
    """reachy-mini-daemon in headless mockup simulation on a free port."""

    def __init__(self, workdir: Path, port: int | None = None, mode: str = "mockup"):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.mode = mode
        self.hf_home = self.workdir / "hf"
        self.hf_home.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"daemon-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "ReachyDaemon":
        exe = daemon_executable()
        if not exe.exists():
            raise RuntimeError(f"{exe} is missing: run ./rosa setup (it installs the Reachy Mini daemon)")
        sim = ["--mockup-sim"] if self.mode == "mockup" else ["--sim"]
        env = dict(os.environ, DO_NOT_TRACK="1", HF_HOME=str(self.hf_home), HF_HUB_OFFLINE="1",
                   HF_HUB_DISABLE_TELEMETRY="1")
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([str(exe), *sim, "--headless", "--no-media", "--fastapi-port", str(self.port)],
                                     env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.get("/api/daemon/status").get("state") == "running":
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the daemon was not running after {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, sig=signal.SIGINT):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def kill(self):
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 5.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def post(self, path: str, body=None, timeout: float = 5.0):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode() if body is not None else b"",
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def state(self) -> dict:
        """Head pose (x, y, z in m; roll, pitch, yaw in rad), body_yaw, antennas [r, l]."""
        s = self.get("/api/state/full?with_head_pose=true&with_body_yaw=true&with_antenna_positions=true")
        return {**s["head_pose"], "body_yaw": s["body_yaw"], "antennas": s["antennas_position"]}

    def __enter__(self) -> "ReachyDaemon":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class McpClient:
    """A persistent MCP session (the `mcp` package's streamable-HTTP client) on a background loop."""

    def __init__(self, url: str, headers: dict | None = None):
        self.url = url
        self.headers = headers
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.session = None
        self._stop = None

    def _run(self, coro, timeout):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, timeout: float = 20.0) -> "McpClient":
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        self.thread.start()
        ready = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop)
        ready.result(5)

        async def open_session(started: asyncio.Future, stop: asyncio.Event):
            try:
                http = None
                if self.headers:
                    from mcp.shared._httpx_utils import create_mcp_http_client
                    http = create_mcp_http_client(headers=self.headers)
                async with streamable_http_client(self.url, http_client=http) as (r, w, _):
                    async with ClientSession(r, w) as s:
                        await s.initialize()
                        self.session = s
                        started.set_result(True)
                        await stop.wait()
            except BaseException as e:  # noqa: BLE001 - reported to the caller
                if not started.done():
                    started.set_exception(e)

        async def begin():
            started = self.loop.create_future()
            self._stop = asyncio.Event()
            self._task = self.loop.create_task(open_session(started, self._stop))
            await started

        deadline = time.monotonic() + timeout
        while True:
            try:
                self._run(begin(), timeout)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def tools(self):
        return self._run(self.session.list_tools(), 20).tools

    def call(self, name: str, args: dict | None = None, timeout: float = 40.0) -> tuple[bool, str]:
        res = self._run(self.session.call_tool(name, args or {}), timeout)
        return bool(res.isError), "\n".join(getattr(c, "text", "") for c in res.content)

    def close(self):
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            try:
                self._run(asyncio.wait_for(self._task, 5), 10)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    def __enter__(self) -> "McpClient":
        return self.start()

    def __exit__(self, *exc):
        self.close()
