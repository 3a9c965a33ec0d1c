#!/usr/bin/env python3
"""Soak benchmark of rosa's core graph: memory and latency over many commands, nothing lost.

    ./rosa bench soak [--commands 10000] [--every 1000] [--json OUT]

The real kernel, process manager and workers run against the scripted, instant LLM and a
recording MCP robot (as `./rosa bench core`); an rclpy peer publishes "soak <i>" on /rosa/command
one after the other, each once the kernel has answered the previous one's worker callback. Every
`--every` commands it prints the RSS of each node, the p50 of command -> WorkerCallback at the
kernel (wall clock: the peer's publish vs. the kernel's KernelEvent stamp) and at the peer, and
the running counts of lost commands (no callback within 20 s) and duplicates (a callback the
kernel consumed twice, a reply said twice), and the size of each node's journal. At the end: RSS
growth per node and the last block's p50 against the first's, with the targets (<= 0.5 MB per node
over the run after the first block; within 5 %), how long workers took to exit after their report
(the process manager logs it), the largest journal sizes, and the recovery after a kill -9 of the
kernel and then of the process manager (time from the kill to the restart notice on /rosa/updates
or the restarted node being ready, and to the next command's callback at the peer, which includes
1 s for the restarted node to be matched).

Run time: about 0.2-0.3 s a command on this 2-core machine (10,000 commands: 35-50 min).
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

DOMAIN = int(os.environ.get("ROSA_BENCH_DOMAIN", "100"))
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # test/: conftest and support/
sys.path.insert(0, str(HERE))

from bench_core import CB, EVENTS, Bench, RunFailed, pct, rss_bytes, slope  # noqa: E402
from conftest import Graph, Peer, wait_until  # noqa: E402
from rosa_interfaces.msg import Update  # noqa: E402
from support.mcp_recorder import McpRecorder  # noqa: E402
from support.scripted_llm import ScriptedLLM  # noqa: E402

UPDATES = "/rosa/updates"
NODES = ("kernel", "process_manager")


def journal_sizes(graph):
    d = graph.tmp / "data" / "state" / f"domain{graph.domain_id}"
    return {n: (d / f"{n}.journal").stat().st_size if (d / f"{n}.journal").exists() else 0 for n in NODES}


def recover(graph, peer, bench, name):
    """kill -9 of `name` between commands, respawned at once (as ./rosa up does): seconds from the
    kill to its restart notice / readiness, and to the next command's callback at the peer."""
    import signal
    p = graph.procs[name][0]
    n_up = len(peer.received(UPDATES))
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    graph.procs[name][1].close()
    os.replace(graph.tmp / f"{name}.log", graph.tmp / f"{name}.before-kill.log")
    graph.start(name)
    if name == "kernel":
        wait_until(lambda: any(u.role == "system" and "restarted after a crash" in u.text
                               for u in peer.received(UPDATES)[n_up:]), 30, "the kernel's restart notice")
    else:
        wait_until(lambda: "process manager ready" in graph.log(name), 30, "the process manager")
    ready = time.monotonic() - t0
    time.sleep(1.0)  # the restarted node's endpoints matched by the peer and the other node
    bench.run(f"after kill -9 of the {name}")
    return {"ready_s": ready, "next_command_s": time.monotonic() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", type=int, default=10000, help="commands in a row (default 10000)")
    ap.add_argument("--every", type=int, default=1000, help="report every N commands (default 1000)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = ap.parse_args()
    every = max(1, min(args.every, args.commands))

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rosa-soak-"))
    llm, robot = ScriptedLLM().start(), McpRecorder(name="testbot").start()
    graph = Graph(tmp, DOMAIN, llm.url, {"testbot": robot.url})
    peer = None
    blocks, error = [], None
    lost = 0
    journal_max = {n: 0 for n in NODES}
    recovery = {}
    pm_log = None  # the process manager's log of the soak (before the kills)
    consumed = Counter()  # worker_callback events the kernel consumed, per worker id
    replies = Counter()  # kernel replies to a worker callback, per worker id
    try:
        peer = Peer(DOMAIN)
        bench = Bench(llm, robot, graph, peer)
        bench.start()
        peer.listen(UPDATES, Update)
        bench.run("warm-up")
        time.sleep(0.5)
        base = {n: rss_bytes(graph.procs[n][0].pid) for n in NODES}
        print(f"rosa soak: {args.commands} commands, domain {DOMAIN}; RSS at start: "
              + ", ".join(f"{n} {b / 1e6:.2f} MB" for n, b in base.items()))
        print(f"{'commands':>9}{'p50 kernel ms':>15}{'p50 peer ms':>13}" + "".join(f"{n + ' MB':>18}" for n in NODES)
              + f"{'lost':>6}{'dup':>5}{'s':>8}")
        block = {"kernel": [], "peer": []}
        for i in range(1, args.commands + 1):
            try:
                m = bench.run(i)
                block["kernel"].append(m["cmd_to_kernel_callback"])
                block["peer"].append(m["cmd_to_peer_callback"])
            except RunFailed as e:
                lost += 1
                print(f"  lost: {e}", flush=True)
            # Tally and forget what the peer received (its lists would grow for the whole run).
            with peer.lock:
                for _, e in peer.msgs[EVENTS]:
                    if e.source == "worker_callback":
                        consumed[e.text.rsplit("worker_id=", 1)[1].split(",")[0]] += 1
                for _, u in peer.msgs[UPDATES]:
                    if u.role == "kernel" and u.text.startswith("Worker finished:"):
                        replies[u.text.rsplit("worker_id=", 1)[1].split(",")[0]] += 1
                peer.msgs[EVENTS].clear()
                peer.msgs[UPDATES].clear()
                peer.msgs[CB].clear()
            if i % 100 == 0:
                for n, size in journal_sizes(graph).items():
                    journal_max[n] = max(journal_max[n], size)
            if i % every == 0 or i == args.commands:
                rss = {n: rss_bytes(graph.procs[n][0].pid) for n in NODES}
                dup = sum(c - 1 for c in consumed.values() if c > 1) + sum(c - 1 for c in replies.values() if c > 1)
                b = {"commands": i, "p50_kernel_ms": pct(block["kernel"], 50) if block["kernel"] else None,
                     "p50_peer_ms": pct(block["peer"], 50) if block["peer"] else None,
                     "rss_bytes": rss, "lost": lost, "duplicated": dup, "elapsed_s": time.monotonic() - started,
                     "journal_bytes": journal_sizes(graph)}
                blocks.append(b)
                p50k = f"{b['p50_kernel_ms']:15.1f}" if b["p50_kernel_ms"] is not None else f"{'-':>15}"
                p50p = f"{b['p50_peer_ms']:13.1f}" if b["p50_peer_ms"] is not None else f"{'-':>13}"
                print(f"{i:>9}{p50k}{p50p}" + "".join(f"{rss[n] / 1e6:18.2f}" for n in NODES)
                      + f"{lost:>6}{dup:>5}{b['elapsed_s']:8.0f}"
                      + "  journals " + ", ".join(f"{n} {v / 1e3:.0f} kB" for n, v in b["journal_bytes"].items()), flush=True)
                block = {"kernel": [], "peer": []}
        pm_log = graph.log("process_manager")
        for name in NODES:
            try:
                recovery[name] = recover(graph, peer, bench, name)
            except (RunFailed, TimeoutError) as e:
                recovery[name] = {"error": str(e)}
                lost += 1
    except Exception as e:  # stop every process and say what went wrong
        error = repr(e)
    finally:
        if peer is not None:
            peer.close()
        graph.stop()
        robot.stop()
        llm.stop()

    out = {"commands": args.commands, "every": every, "domain": DOMAIN, "blocks": blocks, "lost": lost, "error": error}
    if blocks:
        first, last = blocks[0], blocks[-1]
        dup = last["duplicated"]
        print(f"\nlost {lost}, duplicated {dup} (of {args.commands} commands)")
        growth = {n: (last["rss_bytes"][n] - first["rss_bytes"][n]) / 1e6 for n in NODES}
        total = {n: (last["rss_bytes"][n] - base[n]) / 1e6 for n in NODES}
        slopes = {n: slope([(b["commands"] / 1000, b["rss_bytes"][n] / 1e6) for b in blocks]) for n in NODES} if len(blocks) > 1 else {}
        for n in NODES:
            ok = "OK" if growth[n] <= 0.5 else "OVER"
            print(f"RSS {n}: {first['rss_bytes'][n] / 1e6:.2f} MB at {first['commands']} -> {last['rss_bytes'][n] / 1e6:.2f} MB "
                  f"at {last['commands']}: {growth[n]:+.2f} MB (target <= 0.5 MB: {ok}); {total[n]:+.2f} MB since the start"
                  + (f"; slope {slopes[n]:+.3f} MB/1000" if slopes else ""))
        out.update(rss_growth_mb=growth, rss_growth_since_start_mb=total, rss_slope_mb_per_1000=slopes, duplicated=dup)
        if first["p50_kernel_ms"] and last["p50_kernel_ms"]:
            ratio = last["p50_kernel_ms"] / first["p50_kernel_ms"]
            ok = "OK" if ratio <= 1.05 else "OVER"
            print(f"p50 command -> callback at the kernel: first {every} {first['p50_kernel_ms']:.1f} ms, last {last['p50_kernel_ms']:.1f} ms "
                  f"({(ratio - 1) * 100:+.1f} %, target within 5 %: {ok})")
            out["p50_ratio_last_first"] = ratio
    pm_log = pm_log if pm_log is not None else graph.log("process_manager")
    exits = [float(x) for x in re.findall(r"exit_after_report_ms=([0-9.]+)", pm_log)]
    killed = len(re.findall(r"after its final report: killing it", pm_log))
    if exits:
        print(f"worker exit after its report (process manager, {len(exits)} workers): p50 {pct(exits, 50):.0f} ms, "
              f"p95 {pct(exits, 95):.0f} ms, max {max(exits):.0f} ms; killed for lingering: {killed}")
        out["worker_exit_ms"] = {"p50": pct(exits, 50), "p95": pct(exits, 95), "max": max(exits), "n": len(exits), "killed": killed}
    print("largest journal: " + ", ".join(f"{n} {v / 1e3:.0f} kB" for n, v in journal_max.items())
          + " (compacted every 2,000 records)")
    out["journal_max_bytes"] = journal_max
    for name, r in recovery.items():
        if "error" in r:
            print(f"kill -9 of the {name}: FAILED: {r['error']}")
        else:
            print(f"kill -9 of the {name}: back in {r['ready_s']:.2f} s, next command's callback {r['next_command_s']:.2f} s after the kill")
    out["recovery"] = recovery
    wall = time.monotonic() - started
    out["wall_s"] = wall
    print(f"total wall time: {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if error:
        for name in NODES:
            print(f"\n----- {tmp / (name + '.log')} (tail) -----\n{graph.log(name)[-3000:]}")
        print(f"bench soak: FAILED: {error}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print("bench soak: OK" if lost == 0 and not out.get("duplicated") else "bench soak: commands were LOST or DUPLICATED")
    return 0 if lost == 0 and not out.get("duplicated") else 1


if __name__ == "__main__":
    sys.exit(main())
