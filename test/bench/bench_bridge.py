#!/usr/bin/env python3
"""Benchmark of the mcp_bridge node against an rclpy fixture robot (test/support/bridge_fixture.py).

    ./rosa bench bridge [--calls 200] [--seconds 10] [--json OUT]

Over one MCP session (a minimal keep-alive HTTP client speaking MCP's streamable HTTP, so that the
client's own time is small and measured):
1. `publish` (geometry_msgs/Twist) → message at the fixture: from sending the request to the
   fixture's receive time, p50/p95 ms; and the whole call's round trip.
2. `call_service` (std_srvs/Trigger) round trip p50/p95 ms.
3. `read_topic` of a 10 Hz topic (the next message) p50/p95 ms.
4. The client + HTTP + MCP floor: `list_triggers` (no ROS at all) p50 ms; figures "excluding the
   client" subtract it.
5. The bridge's RSS and CPU: idle, and under 10 calls/s.
The same publish / service calls through an MCP server in Python on rclpy
(test/bench/rclpy_mcp_server.py) side by side.
"""

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DOMAIN = int(os.environ.get("ROSA_BENCH_DOMAIN", "101"))
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # test/: conftest and support/

from conftest import ROOT, node_binary, wait_until  # noqa: E402
from support.reachy import free_port  # noqa: E402
from test_bridge import Fixture  # noqa: E402


class RawMcp:
    """Streamable-HTTP MCP over one keep-alive connection (JSON-RPC POSTs, SSE or JSON replies)."""

    def __init__(self, port, path):
        self.port = port
        self.reconnects = 0
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.path = path
        self.sid = None
        self.n = 0
        self.rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                "clientInfo": {"name": "bench", "version": "0"}})
        self.notify("notifications/initialized")

    def _post(self, body):
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.sid:
            h["Mcp-Session-Id"] = self.sid
            h["Mcp-Protocol-Version"] = "2025-06-18"
        try:
            self.conn.request("POST", self.path, body=json.dumps(body), headers=h)
            r = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closed the keep-alive connection: open another (counted).
            self.reconnects += 1
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request("POST", self.path, body=json.dumps(body), headers=h)
            r = self.conn.getresponse()
        self.sid = r.getheader("Mcp-Session-Id") or self.sid
        data = r.read().decode()
        return r, data

    def notify(self, method):
        self._post({"jsonrpc": "2.0", "method": method})

    def rpc(self, method, params):
        self.n += 1
        r, data = self._post({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params})
        if r.getheader("Content-Type", "").startswith("text/event-stream"):
            for line in data.splitlines():
                if line.startswith("data:") and line[5:].strip():
                    m = json.loads(line[5:])
                    if m.get("id") == self.n:
                        return m
            raise RuntimeError(f"no reply in {data[:300]}")
        return json.loads(data)

    def call(self, name, args):
        m = self.rpc("tools/call", {"name": name, "arguments": args})
        res = m.get("result") or {}
        if "error" in m or res.get("isError"):
            raise RuntimeError(f"{name}: {m}")
        return res

    def close(self):
        try:
            h = {"Mcp-Session-Id": self.sid} if self.sid else {}
            self.conn.request("DELETE", self.path, headers=h)
            self.conn.getresponse().read()
        except OSError:
            pass
        self.conn.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def stats(xs):
    return {"p50_ms": round(pct(xs, 50) * 1000, 3), "p95_ms": round(pct(xs, 95) * 1000, 3), "n": len(xs)}


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def cpu_pct(pid, seconds, work=None):
    c0, t0 = cpu_s(pid), time.monotonic()
    if work:
        work(seconds)
    else:
        time.sleep(seconds)
    return round(100 * (cpu_s(pid) - c0) / (time.monotonic() - t0), 2)


def publish_latency(mcp, fixture, calls, args):
    """Request sent → fixture received (fixture's wall clock, same host), and the call's round trip."""
    lat, rtt = [], []
    for i in range(calls):
        before = len(fixture.of("cmd_vel"))
        t0w, t0 = time.time(), time.monotonic()
        mcp.call("publish", args)
        rtt.append(time.monotonic() - t0)
        got = wait_until(lambda: fixture.of("cmd_vel")[before:], 5, "the Twist")
        lat.append(got[0]["t"] - t0w)
    return lat, rtt


def timed(mcp, calls, name, args):
    out = []
    for _ in range(calls):
        t0 = time.monotonic()
        mcp.call(name, args)
        out.append(time.monotonic() - t0)
    return out


def main():
    ap = argparse.ArgumentParser(prog="./rosa bench bridge")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rosa-bench-bridge-"))
    robots = tmp / "robots.yaml"
    robots.write_text("robots:\n  - name: turtle\n    ros:\n      namespace: /r1\n")
    fixture = Fixture(DOMAIN, "r1")
    port = free_port()
    log = open(tmp / "mcp_bridge.log", "w")
    env = dict(os.environ, RUST_LOG="warn,rosa::nodes::mcp_bridge=info", ROSA_CONFIG_DIR=str(ROOT / "config"))
    bridge = subprocess.Popen([str(node_binary("mcp_bridge")), "--ros-args", "--params-file", str(ROOT / "config" / "rosa.yaml"),
                               "-p", f"robots_file:={robots}", "-p", f"port:={port}", "-p", f"data_dir:={tmp}"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rpy = None
    results = {}
    try:
        wait_until(lambda: "mcp_bridge ready" in (tmp / "mcp_bridge.log").read_text(), 30, "the bridge")
        time.sleep(2.0)
        results["bridge_idle"] = {"rss_mb": round(rss_mb(bridge.pid), 1), "cpu_pct": cpu_pct(bridge.pid, 5)}
        mcp = RawMcp(port, "/turtle/mcp")
        twist = {"topic": "cmd_vel", "msg": {"linear": {"x": 0.1}}}
        # Warm up (first publisher waits for its subscriber, the service client discovers).
        publish_latency(mcp, fixture, 5, twist)
        timed(mcp, 5, "call_service", {"service": "reset"})
        floor = timed(mcp, a.calls, "list_triggers", {})
        lat, rtt = publish_latency(mcp, fixture, a.calls, twist)
        srv = timed(mcp, a.calls, "call_service", {"service": "reset"})
        read = timed(mcp, min(a.calls, 50), "read_topic", {"topic": "battery"})
        f50 = pct(floor, 50)
        results["bridge"] = {
            "client_floor_list_triggers": stats(floor),
            "publish_to_fixture": stats(lat),
            "publish_round_trip": stats(rtt),
            "publish_round_trip_excluding_client_p50_ms": round((pct(rtt, 50) - f50) * 1000, 3),
            "call_service_round_trip": stats(srv),
            "call_service_excluding_client_p50_ms": round((pct(srv, 50) - f50) * 1000, 3),
            "read_topic_10hz": stats(read),
            "http_reconnects": mcp.reconnects,
        }

        def load(seconds):
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                t0 = time.monotonic()
                mcp.call("publish", twist) if n % 2 == 0 else mcp.call("call_service", {"service": "reset"})
                n += 1
                time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
        results["bridge_10_calls_per_s"] = {"cpu_pct": cpu_pct(bridge.pid, a.seconds, load), "rss_mb": round(rss_mb(bridge.pid), 1)}
        mcp.close()

        # The same through an MCP server in Python on rclpy.
        rport = free_port()
        rpy = subprocess.Popen([sys.executable, str(HERE / "rclpy_mcp_server.py"), "--port", str(rport), "--ns", "r1"],
                               env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                rm = RawMcp(rport, "/mcp")
                break
            except (OSError, RuntimeError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        time.sleep(1.0)
        results["rclpy_idle"] = {"rss_mb": round(rss_mb(rpy.pid), 1), "cpu_pct": cpu_pct(rpy.pid, 5)}
        publish_latency(rm, fixture, 5, twist)
        timed(rm, 5, "call_service", {"service": "/r1/reset"})
        floor = timed(rm, a.calls, "list_triggers", {})
        lat, rtt = publish_latency(rm, fixture, a.calls, twist)
        srv = timed(rm, a.calls, "call_service", {"service": "/r1/reset"})
        f50 = pct(floor, 50)
        results["rclpy_mcp_server"] = {
            "client_floor_list_triggers": stats(floor),
            "publish_to_fixture": stats(lat),
            "publish_round_trip": stats(rtt),
            "publish_round_trip_excluding_client_p50_ms": round((pct(rtt, 50) - f50) * 1000, 3),
            "call_service_round_trip": stats(srv),
            "call_service_excluding_client_p50_ms": round((pct(srv, 50) - f50) * 1000, 3),
            "http_reconnects": rm.reconnects,
        }
        rm.close()
    finally:
        for p in [bridge, rpy]:
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
                try:
                    p.wait(timeout=8)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        fixture.stop()
    print(json.dumps(results, indent=2))
    b, r = results.get("bridge", {}), results.get("rclpy_mcp_server", {})
    if b and r:
        print(f"\n{'':40s}{'mcp_bridge (Rust)':>20s}{'rclpy MCP server':>20s}")
        for k in ["publish_to_fixture", "publish_round_trip", "call_service_round_trip", "client_floor_list_triggers"]:
            print(f"{k + ' p50/p95 ms':40s}{b[k]['p50_ms']:>10.2f}/{b[k]['p95_ms']:<9.2f}{r[k]['p50_ms']:>10.2f}/{r[k]['p95_ms']:<9.2f}")
        print(f"{'idle RSS MB':40s}{results['bridge_idle']['rss_mb']:>20.1f}{results['rclpy_idle']['rss_mb']:>20.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
