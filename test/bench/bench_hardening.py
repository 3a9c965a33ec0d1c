#!/usr/bin/env python3
"""Figures for hostile input (issue 8): what big or hostile inputs cost the nodes.

    eval "$(./rosa env)"; python test/bench/bench_hardening.py [--prompts 3] [--prompt-mb 5] [--json OUT]
    (or ./rosa bench hardening)

1. The process table with N tasks of M MB each: the largest /rosa/processes message (serialized CDR
   bytes) and the process manager's RSS before and after (the issue measured 15.7 MB messages and
   70 -> 161 MiB with three 5 MB prompts).
2. describe_image on /dev/zero, a symlink to it in the data dir, and two FIFOs at once: the answer
   times and the driver's RSS growth (the issue saw 529 MiB and climbing, and a hung server).
3. A command of invalid UTF-8: publish -> refusal on /rosa/updates latency, and no LLM call.

Real node binaries, the scripted LLM and a recording MCP robot, an rclpy peer; own DDS domain
(ROSA_BENCH_DOMAIN, default 100), loopback only.
"""

import argparse
import json
import logging
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

DOMAIN = int(os.environ.get("ROSA_BENCH_DOMAIN", "100"))
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore", message="Field 'lifespan' has an incomplete definition")

from conftest import LATCHED, Graph, Peer, wait_until  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from rosa_interfaces.action import LaunchProcess  # noqa: E402
from rosa_interfaces.msg import ProcessTable, Update  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from support.mcp_recorder import McpRecorder  # noqa: E402
from support.reachy import McpClient, free_port  # noqa: E402
from support.scripted_llm import Reply, ScriptedLLM, default_handler  # noqa: E402

logging.getLogger("mcp.server.streamable_http").setLevel(logging.CRITICAL)


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cdr_string(raw: bytes) -> bytes:
    return b"\x00\x01\x00\x00" + struct.pack("<I", len(raw) + 1) + raw + b"\x00"


def bench_table(tmp, prompts, prompt_mb, out):
    with ScriptedLLM(default_handler(worker_tool="slow", worker_args={"seconds": 120})) as llm, McpRecorder("testbot") as robot:
        (tmp / "table").mkdir(exist_ok=True)
        g = Graph(tmp / "table", DOMAIN, llm.url, {"testbot": robot.url})
        peer = Peer(DOMAIN)
        try:
            pm = g.start("process_manager", max_processes=max(4, prompts), warm_workers=0)
            peer.listen("/rosa/processes", ProcessTable, LATCHED, publishers=1)
            client = peer.action_client(LaunchProcess, "/rosa/launch_process")
            time.sleep(1.0)
            before = rss_mib(pm.pid)
            big = ("Move slowly. " * (prompt_mb * 80_000))[: prompt_mb * 1_000_000]
            handles = []
            for i in range(prompts):
                h = peer.wait_future(client.send_goal_async(LaunchProcess.Goal(system_prompt=f"{i} {big}", robots=["testbot"])), timeout=60)
                handles.append(h)
            robot.wait_for_calls(prompts, timeout=60)
            time.sleep(1.0)
            after = rss_mib(pm.pid)
            sizes = [len(serialize_message(t)) for t in peer.received("/rosa/processes")]
            out["table"] = {"prompts": prompts, "prompt_bytes": len(big) + 2, "messages": len(sizes),
                            "largest_message_bytes": max(sizes), "pm_rss_mib_before": round(before, 1),
                            "pm_rss_mib_after": round(after, 1)}
            for h in handles:
                peer.wait_future(h.cancel_goal_async())
        finally:
            peer.close()
            g.stop()


def bench_files(tmp, out):
    with ScriptedLLM(lambda req: Reply("a picture")) as llm:
        d = tmp / "files"
        d.mkdir(exist_ok=True)
        data = d / "data"
        data.mkdir()
        (data / "zero.jpg").symlink_to("/dev/zero")
        os.mkfifo(data / "fifo1.jpg")
        os.mkfifo(data / "fifo2.jpg")
        (data / "ok.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
        port = free_port()
        g = Graph(d, DOMAIN, llm.url, {})
        drv = g.start("reachy_driver", daemon_url="http://127.0.0.1:9", mcp_port=port, data_dir=str(data),
                      **{"speech.output": "files", "vision.urls": f"['{llm.url}']", "vision.models": "['scripted']",
                         "vision.key_envs": "['']"})
        mcp = McpClient(f"http://127.0.0.1:{port}/mcp").start(timeout=30)
        try:
            before = rss_mib(drv.pid)
            times = {}
            for name, image in [("dev_zero", "/dev/zero"), ("symlink_to_dev_zero", "zero.jpg"), ("etc_shadow", "/etc/shadow")]:
                t0 = time.monotonic()
                err, _ = mcp.call("describe_image", {"image": image})
                times[name] = round((time.monotonic() - t0) * 1000, 1)
                assert err
            res = {}
            t0 = time.monotonic()
            ts = [threading.Thread(target=lambda k=k: res.__setitem__(k, mcp.call("describe_image", {"image": f"fifo{k}.jpg"})))
                  for k in (1, 2)]
            for t in ts:
                t.start()
            err, _ = mcp.call("describe_image", {"image": "ok.jpg"})
            times["regular_file_during_two_fifos"] = round((time.monotonic() - t0) * 1000, 1)
            for t in ts:
                t.join(10)
            times["two_fifos"] = round((time.monotonic() - t0) * 1000, 1)
            out["files"] = {"answer_ms": times, "driver_rss_mib_before": round(before, 1),
                            "driver_rss_mib_after": round(rss_mib(drv.pid), 1), "fifo_answers": len(res)}
        finally:
            mcp.close()
            g.stop()


def bench_refusal(tmp, runs, out):
    with ScriptedLLM(lambda req: Reply("never")) as llm:
        d = tmp / "refusal"
        d.mkdir(exist_ok=True)
        g = Graph(d, DOMAIN, llm.url, {})
        peer = Peer(DOMAIN)
        try:
            g.start("kernel")
            peer.listen("/rosa/updates", Update, publishers=1)
            pub = peer.publisher("/rosa/command", String)
            lat = []
            for i in range(runs):
                n = len(peer.received("/rosa/updates"))
                t0 = time.monotonic()
                pub.publish(cdr_string(b"bad \xff" + str(i).encode()))
                wait_until(lambda: len(peer.received("/rosa/updates")) > n, 10, "a refusal")
                lat.append((peer.received_at("/rosa/updates")[-1][0] - t0) * 1000)
            lat.sort()
            out["refusal"] = {"runs": runs, "p50_ms": round(statistics.median(lat), 2),
                              "p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 2),
                              "llm_calls": len(llm.requests_by("kernel"))}
        finally:
            peer.close()
            g.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--prompt-mb", type=int, default=5)
    ap.add_argument("--refusals", type=int, default=100)
    ap.add_argument("--json")
    a = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory(prefix="rosa-bench-hardening-") as t:
        tmp = Path(t)
        try:
            bench_table(tmp, a.prompts, a.prompt_mb, out)
            bench_files(tmp, out)
            bench_refusal(tmp, a.refusals, out)
        except Exception:
            for log in sorted(tmp.glob("*/*.log")):
                print(f"----- {log} -----\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
    t = out["table"]
    print(f"process table, {t['prompts']} tasks of {t['prompt_bytes'] / 1e6:.1f} MB: largest /rosa/processes message "
          f"{t['largest_message_bytes']} bytes over {t['messages']} messages; process_manager RSS "
          f"{t['pm_rss_mib_before']} -> {t['pm_rss_mib_after']} MiB")
    f = out["files"]
    print(f"describe_image answers (ms): {f['answer_ms']}; reachy_driver RSS {f['driver_rss_mib_before']} -> "
          f"{f['driver_rss_mib_after']} MiB")
    r = out["refusal"]
    print(f"invalid UTF-8 command -> refusal on /rosa/updates: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms over "
          f"{r['runs']}; LLM calls: {r['llm_calls']}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
