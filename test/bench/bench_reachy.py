#!/usr/bin/env python3
"""Benchmark of the reachy_driver node against the real daemon in headless mockup simulation.

    ./rosa bench reachy [--calls 200] [--seconds 5] [--json OUT]

1. MCP tool call → driver → daemon → reply: `goto_target(wait=false)` (a short head turn, 0.2 s),
   one call at a time over one MCP session (the `mcp` package's streamable-HTTP client), latency
   percentiles in ms.
2. The `/joint_states` rate (and the gaps between messages) seen by an rclpy subscriber.
3. Memory: RSS of the driver and of the daemon, idle and after the calls.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

DOMAIN = int(os.environ.get("ROSA_BENCH_DOMAIN", "101"))
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/: conftest and support/
warnings.filterwarnings("ignore", message="Field 'lifespan' has an incomplete definition")
logging.getLogger("mcp.client.streamable_http").setLevel(logging.ERROR)

from conftest import Graph, Peer  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from support.reachy import McpClient, ReachyDaemon, free_port  # noqa: E402


def rss_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def tree_rss_mb(pid):
    """RSS of a process and its children (the daemon runs a few)."""
    total = rss_mb(pid)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().split(") ")[1].split()[1]) == pid:
                    total += tree_rss_mb(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return total


def cpu_seconds(pid):
    f = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200, help="goto_target calls (default 200)")
    ap.add_argument("--seconds", type=float, default=5.0, help="/joint_states sampling time (default 5)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rosa-bench-reachy-"))
    daemon = ReachyDaemon(tmp)
    graph = peer = mcp = None
    ok = False
    try:
        t0 = time.monotonic()
        daemon.start()
        print(f"daemon (mockup-sim) running in {time.monotonic() - t0:.1f} s at {daemon.url}")
        port = free_port()
        graph = Graph(tmp, DOMAIN, "http://127.0.0.1:9/v1", {})
        drv = graph.start("reachy_driver", daemon_url=daemon.url, mcp_port=port, **{"speech.output": "files",
                          "data_dir": str(tmp / "data")})
        mcp = McpClient(f"http://127.0.0.1:{port}/mcp").start(timeout=30)
        peer = Peer(DOMAIN)
        peer.listen("/joint_states", JointState)
        peer.wait_for_msg("/joint_states", timeout=20)
        time.sleep(1.0)
        idle = {"driver": rss_mb(drv.pid), "daemon": tree_rss_mb(daemon.proc.pid)}

        # 1. goto_target(wait=false) latency.
        for _ in range(5):  # warm-up
            mcp.call("goto_target", {"yaw": 0, "duration": 0.2, "wait": False})
        lat = []
        for i in range(args.calls):
            t = time.perf_counter()
            err, text = mcp.call("goto_target", {"yaw": 5 if i % 2 else -5, "duration": 0.2, "wait": False})
            lat.append((time.perf_counter() - t) * 1000)
            if err:
                raise RuntimeError(f"goto_target failed: {text}")
        # For comparison: the MCP round trip alone (a tool that answers without the daemon: no camera)…
        bare = []
        for _ in range(args.calls):
            t = time.perf_counter()
            mcp.call("take_picture")
            bare.append((time.perf_counter() - t) * 1000)
        # … and the same request straight to the daemon's HTTP API (no MCP, no driver).
        direct = []
        for i in range(args.calls):
            t = time.perf_counter()
            daemon.post("/api/move/goto", {"head_pose": {"yaw": 0.087 if i % 2 else -0.087}, "duration": 0.2})
            direct.append((time.perf_counter() - t) * 1000)
        # 2. /joint_states rate, while the head keeps moving.
        start = time.monotonic()
        cpu0 = cpu_seconds(drv.pid)
        time.sleep(args.seconds)
        cpu = (cpu_seconds(drv.pid) - cpu0) / (time.monotonic() - start) * 100
        stamps = [t for t, _ in peer.received_at("/joint_states") if start <= t <= start + args.seconds]
        gaps = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:])]
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        after = {"driver": rss_mb(drv.pid), "daemon": tree_rss_mb(daemon.proc.pid)}

        figures = {
            "goto_wait_false_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
                                   "min": min(lat), "max": max(lat), "calls": len(lat)},
            "mcp_round_trip_ms": {"p50": pct(bare, 50), "p95": pct(bare, 95), "max": max(bare)},
            "daemon_goto_direct_ms": {"p50": pct(direct, 50), "p95": pct(direct, 95), "max": max(direct)},
            "joint_states": {"hz": rate, "gap_p50_ms": pct(gaps, 50), "gap_p95_ms": pct(gaps, 95),
                             "gap_max_ms": max(gaps), "seconds": args.seconds, "driver_cpu_percent": cpu},
            "rss_mb": {"idle": idle, "after_calls": after},
        }
        g = figures["goto_wait_false_ms"]
        print(f"\nMCP goto_target(wait=false) -> daemon -> reply, {len(lat)} calls (ms)")
        print(f"  p50 {g['p50']:.2f}   p95 {g['p95']:.2f}   p99 {g['p99']:.2f}   min {g['min']:.2f}   max {g['max']:.2f}")
        b = figures["mcp_round_trip_ms"]
        print(f"  (MCP round trip alone, a tool not touching the daemon: p50 {b['p50']:.2f}   p95 {b['p95']:.2f}   max {b['max']:.2f})")
        d = figures["daemon_goto_direct_ms"]
        print(f"  (the daemon alone, POST /api/move/goto from Python: p50 {d['p50']:.2f}   p95 {d['p95']:.2f}   max {d['max']:.2f})")
        j = figures["joint_states"]
        print(f"\n/joint_states: {j['hz']:.1f} Hz over {args.seconds:.0f} s; gaps p50 {j['gap_p50_ms']:.1f} ms, "
              f"p95 {j['gap_p95_ms']:.1f} ms, max {j['gap_max_ms']:.1f} ms; driver CPU {cpu:.1f} % of one core")
        print(f"\nRSS (MB): driver {idle['driver']:.1f} idle, {after['driver']:.1f} after the calls; "
              f"daemon {idle['daemon']:.1f} idle, {after['daemon']:.1f} after")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        ok = rate >= 20
        if not ok:
            print(f"bench reachy: /joint_states below 20 Hz ({rate:.1f})")
    except Exception as e:  # noqa: BLE001 - reported with the logs
        print(f"bench reachy: FAILED: {e}")
        if graph:
            print(f"----- reachy_driver.log (tail) -----\n{graph.log('reachy_driver')[-3000:]}")
    finally:
        if mcp:
            mcp.close()
        if peer:
            peer.close()
        if graph:
            graph.stop()
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("bench reachy: OK" if ok else "bench reachy: FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
