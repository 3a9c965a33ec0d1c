#!/usr/bin/env python3
"""Latency and memory benchmark of rosa's core graph (kernel + process_manager + workers).

    cd /work/main && eval "$(./rosa env)"
    python test/bench/bench_core.py [--runs 50] [--drift 1000] [--json OUT]

The real node binaries run against a scripted, instant LLM (test/support/scripted_llm.py) and a
recording MCP robot (test/support/mcp_recorder.py); an rclpy peer publishes the commands. One run:
the peer publishes "bench <i>" on /rosa/command, the kernel's LLM calls launch_process, the
worker's LLM calls `wave`, the worker reports back and the kernel answers the callback. Runs are
sequential. Timestamps: time.monotonic() in this process (peer, LLM, MCP server), and wall clock
(time.time() vs. the kernel's KernelEvent.stamp) for the one hop measured inside the kernel.
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

# Own DDS domain (the test suite uses 1..99), loopback only: set before rclpy is imported (by conftest).
DOMAIN = int(os.environ.get("ROSA_BENCH_DOMAIN", "100"))
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/: conftest and support/
warnings.filterwarnings("ignore", message="Field 'lifespan' has an incomplete definition")  # pydantic, via mcp

from conftest import Graph, Peer, install_prefix, wait_until  # noqa: E402
from rosa_interfaces.action import LaunchProcess  # noqa: E402
from rosa_interfaces.msg import KernelEvent, WorkerCallback  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from support.mcp_recorder import McpRecorder  # noqa: E402
from support.scripted_llm import Calls, Reply, ScriptedLLM, default_handler, last_message, worker_task  # noqa: E402

# A worker exits without closing its MCP session's SSE stream: the server logs a harmless traceback.
logging.getLogger("mcp.server.streamable_http").setLevel(logging.CRITICAL)

RUN_TIMEOUT = 20.0  # seconds per run
CB, EVENTS = "/rosa/worker_callback", "/rosa/events"
METRICS = [  # key, label
    ("cmd_to_kernel_llm", "1. command -> kernel LLM request"),
    ("launch_to_worker_llm", "2. launch_process -> worker LLM request"),
    ("tool_to_mcp", "3. worker tool call -> MCP server"),
    ("cmd_to_kernel_callback", "4. command -> WorkerCallback at kernel (wall)"),
    ("cmd_to_peer_callback", "   command -> WorkerCallback at peer"),
]


class RunFailed(Exception):
    pass


class Marks:
    """Wraps the LLM handler to note when it answered (monotonic), keyed by task or worker id."""

    def __init__(self, handler):
        self.handler = handler
        self.launch, self.wave, self.worker_of, self.cb_reply = {}, {}, {}, {}

    def __call__(self, req):
        result = self.handler(req)
        t = time.monotonic()
        last = last_message(req)
        text = last.get("content") or ""
        if isinstance(result, Calls) and result.calls[0].name == "launch_process":
            self.launch[result.calls[0].arguments["system_prompt"]] = t  # kernel: "Task: bench <i>"
        elif isinstance(result, Calls):
            self.wave[worker_task(req)] = t  # worker: "Task: bench <i>"
        elif last.get("role") == "tool" and text.startswith("launched worker_id="):
            # The kernel got launch_process's result: map its worker id to the task it was given.
            call = next(m for m in reversed(req["messages"]) if m.get("tool_calls"))
            task = json.loads(call["tool_calls"][0]["function"]["arguments"])["system_prompt"]
            self.worker_of[task] = text.split("worker_id=")[1].split(";")[0]
        elif isinstance(result, Reply) and text.startswith("[Worker callback]"):
            self.cb_reply[text.rsplit("worker_id=", 1)[1].split(",")[0]] = t
        return result


def first(seq, pred):
    return next((x for x in seq if pred(x)), None)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb * 1024


def pct(xs, q):
    """q-th percentile with linear interpolation between closest ranks."""
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def slope(points):
    """Least-squares slope of [(x, y)]."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


class Bench:
    def __init__(self, llm, robot, graph, peer):
        self.llm, self.robot, self.graph, self.peer = llm, robot, graph, peer
        self.marks = Marks(default_handler())
        llm.handler = self.marks

    def start(self):
        """Start the graph and wait until it is ready, as test_core.start_core does."""
        self.graph.start("process_manager")
        self.graph.start("kernel")
        self.peer.listen(CB, WorkerCallback).listen(EVENTS, KernelEvent)
        self.peer.action_client(LaunchProcess, "/rosa/launch_process")
        self.pub = self.peer.publisher("/rosa/command", String)  # waits for the kernel's subscription

    def rss(self):
        return {n: rss_bytes(self.graph.procs[n][0].pid) for n in ("kernel", "process_manager")}

    def run(self, name):
        """One command, waited for until the kernel answered its worker's callback; returns ms per metric."""
        self.llm.clear()  # the recorders keep every request body: keep them to one run
        self.robot.clear()
        n_ev, n_cb = len(self.peer.received(EVENTS)), len(self.peer.received(CB))
        text = f"bench {name}"
        task = f"Task: {text}"
        deadline = time.monotonic() + RUN_TIMEOUT

        def step(what, pred):
            def done_or_failed():
                # Any failed worker during this run is this run's: say so at once, not after the timeout.
                bad = first(self.peer.received(CB)[n_cb:], lambda m: m.final and not m.done)
                if bad:
                    raise RunFailed(f"run {name!r}: worker {bad.worker_id} failed before {what}: {bad.message}")
                return pred()
            try:
                return wait_until(done_or_failed, max(0.0, deadline - time.monotonic()), what)
            except TimeoutError:
                raise RunFailed(f"run {name!r}: {what} did not happen within {RUN_TIMEOUT:.0f} s of the command") from None

        t0, w0 = time.monotonic(), time.time()
        self.pub.publish(String(data=text))
        reqs = self.llm.snapshot
        k_req = step("the kernel's LLM request for the command", lambda: first(
            reqs(), lambda r: r["role"] == "kernel" and last_message(r["body"]).get("content") == f"[User typed] {text}"))
        t_launch = step("the launch_process tool call", lambda: self.marks.launch.get(task))
        w_req = step("the worker's first LLM request", lambda: first(
            reqs(), lambda r: r["role"] == "worker" and worker_task(r["body"]) == task))
        t_wave = step("the worker's `wave` tool call (LLM answer)", lambda: self.marks.wave.get(task))
        call = step("the MCP call of `wave` at the robot", lambda: first(self.robot.snapshot(), lambda c: c["t"] >= t_wave))
        wid = step("the launch_process result at the kernel", lambda: self.marks.worker_of.get(task))
        ev = step(f"the KernelEvent worker_callback of {wid}", lambda: first(
            self.peer.received(EVENTS)[n_ev:], lambda e: e.source == "worker_callback" and f"worker_id={wid}," in e.text))
        step(f"the kernel's LLM answer to the callback of {wid}", lambda: self.marks.cb_reply.get(wid))
        t_cb = step(f"the WorkerCallback of {wid} at the peer", lambda: first(
            self.peer.received_at(CB)[n_cb:], lambda tm: tm[1].worker_id == wid and tm[1].final))[0]
        return {
            "cmd_to_kernel_llm": (k_req["t"] - t0) * 1e3,
            "launch_to_worker_llm": (w_req["t"] - t_launch) * 1e3,
            "tool_to_mcp": (call["t"] - t_wave) * 1e3,
            "cmd_to_kernel_callback": (ev.stamp.sec + ev.stamp.nanosec * 1e-9 - w0) * 1e3,
            "cmd_to_peer_callback": (t_cb - t0) * 1e3,
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50, help="measured runs (default 50)")
    ap.add_argument("--drift", type=int, default=1000, help="extra commands for the RSS drift (0 = skip)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = ap.parse_args()

    started = time.monotonic()
    # A rebuild during the benchmark makes worker spawns fail ("Text file busy"): notice it.
    built = {b: b.stat().st_mtime for b in (install_prefix() / "rosa" / "lib" / "rosa").iterdir()}
    tmp = Path(tempfile.mkdtemp(prefix="rosa-bench-"))
    llm, robot = ScriptedLLM().start(), McpRecorder(name="testbot").start()
    graph = Graph(tmp, DOMAIN, llm.url, {"testbot": robot.url})
    peer, out, error = None, {"runs": args.runs, "drift": args.drift, "domain": DOMAIN}, None
    try:
        peer = Peer(DOMAIN)
        bench = Bench(llm, robot, graph, peer)
        bench.start()
        bench.run("warm-up")
        time.sleep(0.5)
        idle = bench.rss()

        # Latency: sequential runs.
        samples = {k: [] for k, _ in METRICS}
        for i in range(args.runs):
            for k, v in bench.run(i).items():
                samples[k].append(v)
        after_runs = bench.rss()
        print(f"\nrosa core latency, {args.runs} runs (ms)")
        print(f"{'':46}{'p50':>8}{'p95':>8}{'min':>8}{'max':>8}")
        out["latency_ms"] = {}
        for k, label in METRICS:
            xs = samples[k]
            stats = {"p50": pct(xs, 50), "p95": pct(xs, 95), "min": min(xs), "max": max(xs)}
            out["latency_ms"][k] = dict(stats, samples=xs)
            print(f"{label:46}" + "".join(f"{v:8.1f}" for v in stats.values()))

        # Memory: RSS of kernel + process_manager, then its drift over --drift more commands.
        def fmt(r):
            return " + ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in r.items()) + \
                f" = {sum(r.values()) / 2**20:.1f} MiB ({sum(r.values()) / 1e6:.1f} MB)"
        print(f"\nRSS idle (after warm-up): {fmt(idle)}")
        print(f"RSS after {args.runs} runs:   {fmt(after_runs)}")
        out["rss_bytes"] = {"idle": idle, "after_runs": after_runs}
        if args.drift > 0:
            drift = [(0, after_runs)]
            for i in range(1, args.drift + 1):
                bench.run(f"drift {i}")
                if i % 100 == 0 or i == args.drift:
                    drift.append((i, bench.rss()))
            print(f"\nRSS drift over {args.drift} more commands (MB = 1e6 bytes):")
            print(f"{'commands':>10}{'kernel':>10}{'proc_mgr':>10}{'sum':>10}")
            for n, r in drift:
                print(f"{n:>10}{r['kernel'] / 1e6:10.2f}{r['process_manager'] / 1e6:10.2f}{sum(r.values()) / 1e6:10.2f}")
            # Least squares over the second half: the kernel's memory fills up to its bound first.
            half = drift[len(drift) // 2:] if len(drift) >= 4 else drift
            slopes = {n: slope([(c / 1000, r[n] / 1e6) for c, r in half]) for n in ("kernel", "process_manager")}
            slopes["sum"] = sum(slopes.values())
            print("slope (MB / 1000 commands, samples from %d on): " % half[0][0]
                  + ", ".join(f"{n} {s:+.2f}" for n, s in slopes.items()))
            out["rss_drift"] = {"samples": [{"commands": n, **r} for n, r in drift], "slope_mb_per_1000": slopes}
    except (RunFailed, TimeoutError) as e:
        error = str(e)
    except Exception as e:  # anything else still stops every process and says what went wrong
        error = repr(e)
    finally:
        if peer is not None:
            peer.close()
        graph.stop()
        robot.stop()
        llm.stop()

    wall = time.monotonic() - started
    out["wall_s"], out["error"] = wall, error
    print(f"\ntotal wall time: {wall:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if any(b.stat().st_mtime != t for b, t in built.items()):
        print("note: node binaries in install/ were rebuilt while the benchmark ran")
    if error:
        for name in ("kernel", "process_manager"):
            print(f"\n----- {tmp / (name + '.log')} (tail) -----\n{graph.log(name)[-3000:]}")
        print(f"bench core: FAILED: {error}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print("bench core: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
