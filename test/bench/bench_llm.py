#!/usr/bin/env python3
"""Benchmark of the embedded LLM (the llm_server node and its local model) on this machine.

    ./rosa bench llm [--kernel N] [--worker N] [--no-e2e] [--e2e-warm-prefix on|off] [--json OUT] [--url URL --model NAME]

1. Load: llm_server started → model loaded (s); RSS of llama-server.
2. Speed: prompt processing (uncached: a worker's 2.7k-token prefix) and generation, tokens/s.
3. Kernel decisions: each event of test/llm_decisions.yaml through the kernel's own logic
   (examples/kernel_decisions.rs: its prompt, tools, agent loop, client): share of right first
   decisions, plain-text replies after a launch, seconds per decision (the first LLM call, with
   the prompt prefix cached), whole event.
4. Worker tasks: each task of the set run by the real `worker` binary against the real
   reachy_driver and the Reachy Mini daemon (headless mockup): share of finished tasks (the
   daemon's state and the tools called match), seconds per task, tool calls well-formed.
5. "look to your left" end to end: process_manager + kernel + worker + driver + daemon + the model:
   `./rosa say` → the head has turned (read from the daemon) → the worker's report → the kernel's.

With --url, an endpoint of your own is measured instead of llm_server (1 and 2 are skipped).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

DOMAIN = int(os.environ.get("ROSA_BENCH_DOMAIN", "101"))
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # test/: conftest and support/

import yaml  # noqa: E402
from conftest import ROOT, Graph, Peer, wait_until  # noqa: E402
from support.reachy import McpClient, ReachyDaemon, free_port, write_emotions  # noqa: E402

DEG = 3.141592653589793 / 180
PREFIX = Path(os.environ.get("ROSA_INSTALL", ROOT / "install")) / "rosa" / "lib" / "rosa"
KERNEL_BENCH = ROOT / "build" / "rosa" / "release" / "examples" / "kernel_decisions"


def rss_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def pct(xs, q):
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def post(url, body, timeout=600):
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def llama_pid(domain):
    exe = str(ROOT / ".rosa" / "llama" / "bin" / "llama-server").encode()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().split(b"\0")[0] == exe \
                    and f"ROS_DOMAIN_ID={domain}".encode() in (d / "environ").read_bytes().split(b"\0"):
                return int(d.name)
        except OSError:
            pass
    return None


def compose_worker_prompt(rules, name, description, prompt):
    """The process manager's composition (rosa::worker::compose_system_prompt)."""
    s = rules.strip() + f"\n\n## Robot `{name}`\n"
    if description:
        s += description + "\n"
    if prompt:
        s += prompt + "\n"
    return s.rstrip()


def kernel_ok(item, line):
    """(right first decision, plain reply after a launch)."""
    expect = item["expect"] if isinstance(item["expect"], list) else [item["expect"]]
    acts = line["actions"]
    first = acts[0]["tool"] if acts else None
    kinds = {"launch": "launch_process", "list": "list_processes", "terminate": "terminate_process", "reply": None}
    ok = False
    for e in expect:
        if kinds[e] != first:
            continue
        if e == "reply":
            ok = bool((line.get("reply") or "").strip()) and not line.get("error")
        elif e == "launch":
            a = acts[0]
            task = a.get("system_prompt", "").lower()
            ok = a.get("robots") == ["reachy-mini"] and (not item.get("mentions") or any(m in task for m in item["mentions"]))
        elif e == "terminate":
            ok = acts[0].get("worker_id") == item.get("worker_id")
        else:
            ok = True
        if ok:
            break
    reply = (line.get("reply") or "").strip()
    plain = bool(reply) and not reply.startswith("{") and "<tool_call>" not in reply and not line.get("error")
    launches = sum(1 for a in acts if a["tool"] == "launch_process")
    return ok, plain and launches <= 1


def worker_checks(task, s, s0, tools):
    c = task.get("check", {})
    deg = {k: s[k] / DEG for k in ("roll", "pitch", "yaw", "body_yaw")}
    fails = []
    for key, v in c.items():
        if key == "antennas_moved":
            moved = max(abs(a - b) for a, b in zip(s["antennas"], s0["antennas"]))
            if moved < v:
                fails.append(f"antennas moved {moved:.2f} rad")
            continue
        if key.startswith("z_"):
            val = s["z"] * 1000 - s0["z"] * 1000
            name = "z"
        else:
            name = key.rsplit("_", 1)[0].replace("_abs", "")
            val = deg[name]
            if "_abs_" in key:
                val = abs(val)
        if key.endswith("_min") and val < v or key.endswith("_max") and val > v:
            fails.append(f"{key}: {val:.1f}")
    for t in task.get("called", []):
        if t not in tools:
            fails.append(f"{t} not called")
    for t in task.get("not_called", []):
        if t in tools:
            fails.append(f"{t} called")
    for t, n in task.get("called_min", {}).items():
        if tools.count(t) < n:
            fails.append(f"{t} called {tools.count(t)} times")
    return fails


def run_worker(spec, timeout=300):
    t0 = time.monotonic()
    # The spec is one line on stdin, which then stays open: it is the worker's lifeline (end of
    # file means its process manager is gone, and the worker ends at once).
    p = subprocess.Popen([str(PREFIX / "worker")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdin.write(json.dumps(spec) + "\n")
    p.stdin.flush()
    err = []
    reader = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
    reader.start()
    killer = threading.Timer(timeout, p.kill)
    killer.start()
    out = p.stdout.read()
    p.wait()
    killer.cancel()
    p.stdin.close()
    reader.join(5)
    took = time.monotonic() - t0
    tools, final, steps = [], None, 0
    for line in out.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("event") == "step":
            steps = max(steps, r.get("step", 0))
            if r.get("tool"):
                tools.append(r["tool"])
        elif r.get("event") == "final":
            final = r
    return tools, final, steps, took, "".join(err)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", type=int, default=0, help="kernel events to run (default: all)")
    ap.add_argument("--worker", type=int, default=0, help="worker tasks to run (default: all)")
    ap.add_argument("--no-e2e", action="store_true", help="skip the 'look to your left' end-to-end run")
    ap.add_argument("--e2e-warm-prefix", choices=["on", "off"], default="on",
                    help="end-to-end run: the kernel and the process manager warm the LLM with their prompt prefixes "
                         "at start (warm_prefix; ./rosa up sets it for the embedded model), and the run waits for it")
    ap.add_argument("--worker-tool-choice", choices=["auto", "required"], default=None,
                    help="the workers' tool_choice (default: worker_tool_choice of config/rosa.yaml)")
    ap.add_argument("--worker-act-first", choices=["on", "off"], default=None,
                    help="a worker's first step must call a tool (default: on for llm_server, as ./rosa up "
                         "sets it for the embedded model; with --url, worker_act_first of config/rosa.yaml)")
    ap.add_argument("--url", help="an OpenAI-compatible endpoint to measure instead of llm_server")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()

    params = yaml.safe_load((ROOT / "config" / "rosa.yaml").read_text())
    pm = params["/rosa/process_manager"]["ros__parameters"]
    tool_choice = args.worker_tool_choice or pm.get("worker_tool_choice", "auto")
    act_first = args.worker_act_first == "on" if args.worker_act_first else (
        not args.url or bool(pm.get("worker_act_first", False)))
    decisions = yaml.safe_load((ROOT / "test" / "llm_decisions.yaml").read_text())
    kernel_items = decisions["kernel"][: args.kernel or None]
    worker_items = decisions["worker"][: args.worker or None]
    registry = yaml.safe_load((ROOT / "config" / "robots.yaml").read_text())["robots"][0]
    robot_prompt = (ROOT / "config" / registry["prompt_file"]).read_text().strip()
    rules = (ROOT / "config" / "prompts" / "worker.txt").read_text()

    tmp = Path(tempfile.mkdtemp(prefix="rosa-bench-llm-"))
    figures = {"domain": DOMAIN, "worker_tool_choice": tool_choice, "worker_act_first": act_first}
    graph = Graph(tmp, DOMAIN, "http://127.0.0.1:9/v1", {})
    daemon = None
    try:
        # 1. load
        if args.url:
            url = args.url.rstrip("/")
        else:
            port = free_port()
            url = f"http://127.0.0.1:{port}/v1"
            t0 = time.monotonic()
            graph.start("llm_server", port=port)
            wait_until(lambda: _health(url), 300, "the model to load")
            figures["load_sec"] = round(time.monotonic() - t0, 2)
            pid = llama_pid(DOMAIN)
            figures["rss_mb_loaded"] = round(rss_mb(pid)) if pid else None
            print(f"load: {figures['load_sec']:.1f} s (node start to /health ok); llama-server RSS {figures['rss_mb_loaded']} MB", flush=True)

        # The robot: the daemon (headless mockup) and the real driver.
        daemon = ReachyDaemon(tmp)
        write_emotions(daemon.hf_home, {"cheerful1": {"yaw_deg": 15, "antennas": [0.5, -0.5], "seconds": 0.6},
                                        "sad1": {"yaw_deg": -10, "seconds": 0.6}})
        daemon.start()
        mcp_port = free_port()
        graph.start("reachy_driver", daemon_url=daemon.url, mcp_port=mcp_port, **{"speech.output": "files",
                    "speech.output_dir": str(tmp / "speech"), "data_dir": str(tmp / "data")})
        mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
        wait_until(lambda: "reachy_driver ready" in graph.log("reachy_driver"), 60, "the driver")
        with McpClient(mcp_url) as mcp:
            reachy_tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                               "parameters": t.inputSchema}} for t in mcp.tools()]

        # 2. speed: an uncached long prompt (a worker's prefix with the Reachy tools), then generation
        if not args.url:
            system = compose_worker_prompt(rules, "reachy-mini", registry["description"], robot_prompt)
            speeds = []
            for i in range(2):
                r = post(url, {"model": args.model, "temperature": 0, "max_tokens": 48, "user": f"speed{i}",
                               "tools": reachy_tools,
                               "messages": [{"role": "system", "content": f"[run {time.time()}] " + system},
                                            {"role": "user", "content": "Write a short poem about robots, in plain text."}]})
                t = r["usage"]["timings"]
                speeds.append((r["usage"]["prompt_tokens"], r["usage"]["prompt_tokens_details"]["cached_tokens"], t["prompt_per_second"], t["predicted_per_second"]))
            figures["worker_prefix_tokens"] = speeds[0][0]
            figures["prompt_tokens_per_sec"] = round(statistics.mean(s[2] for s in speeds), 1)
            figures["generation_tokens_per_sec"] = round(statistics.mean(s[3] for s in speeds), 1)
            figures["uncached_prefix_sec"] = round(speeds[0][0] / max(figures["prompt_tokens_per_sec"], 0.1), 1)
            print(f"speed: prompt {figures['prompt_tokens_per_sec']} tok/s (uncached, {speeds[0][0]} tokens), "
                  f"generation {figures['generation_tokens_per_sec']} tok/s", flush=True)

        llm_cfg = {"urls": [url], "models": [args.model], "key_envs": [""], "max_retries": 1, "timeout_sec": 300,
                   "first_token_timeout_sec": 120, "stall_timeout_sec": 120, "temperature": 0.2}

        # 3. kernel decisions
        if kernel_items:
            job = {"llm": llm_cfg, "prompt_file": str(ROOT / "config" / "prompts" / "kernel.txt"),
                   "robots": [{"name": registry["name"], "description": registry["description"]}],
                   "max_steps": 8, "deadline_sec": 300, "events": kernel_items}
            p = subprocess.run([str(KERNEL_BENCH)], input=json.dumps(job), capture_output=True, text=True, timeout=7200)
            lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
            if len(lines) != len(kernel_items):
                sys.exit(f"kernel_decisions: {len(lines)} of {len(kernel_items)} events answered:\n{p.stderr[-3000:]}")
            right, plain, first_s, event_s, wrong = 0, 0, [], [], []
            for item, line in zip(kernel_items, lines):
                ok, pl = kernel_ok(item, line)
                right += ok
                plain += pl
                if line["llm_calls"]:
                    first_s.append(line["llm_calls"][0]["seconds"])
                event_s.append(line["seconds"])
                if not ok or not pl:
                    wrong.append({"event": item["event"], "expect": item["expect"], "actions": line["actions"], "reply": line["reply"], "error": line["error"]})
            # The first event pays for the uncached prefix: latency figures leave it out.
            figures["kernel"] = {
                "events": len(lines), "right_decisions": right, "right_share": round(right / len(lines), 3),
                "plain_replies": plain,
                "decision_sec_p50": round(pct(first_s[1:], 50), 2), "decision_sec_p95": round(pct(first_s[1:], 95), 2),
                "first_event_decision_sec": round(first_s[0], 2) if first_s else None,
                "event_sec_p50": round(pct(event_s[1:], 50), 2), "wrong": wrong,
            }
            k = figures["kernel"]
            print(f"kernel: {right}/{len(lines)} right first decisions ({100 * k['right_share']:.0f} %), {plain}/{len(lines)} ended with a plain reply; "
                  f"decision p50 {k['decision_sec_p50']} s, p95 {k['decision_sec_p95']} s (cached prefix; first event {k['first_event_decision_sec']} s); "
                  f"whole event p50 {k['event_sec_p50']} s", flush=True)
            for w in wrong:
                print(f"  not right: {w['event']!r} expected {w['expect']}: {json.dumps(w['actions'])[:200]} reply={str(w['reply'])[:120]!r} {w['error'] or ''}")

        # 4. worker tasks, on the real driver and daemon
        if worker_items:
            system = compose_worker_prompt(rules, "reachy-mini", registry["description"], robot_prompt)
            done, secs, rows = 0, [], []
            for i, task in enumerate(worker_items):
                daemon.post("/api/move/goto", {"head_pose": {"x": 0, "y": 0, "z": 0, "roll": 0, "pitch": 0, "yaw": 0},
                                               "antennas": [0, 0], "body_yaw": 0, "duration": 0.3})
                time.sleep(0.5)
                if task.get("pre"):
                    pre = {k: v * DEG for k, v in task["pre"].items()}
                    daemon.post("/api/move/goto", {"head_pose": {"x": 0, "y": 0, "z": 0, "roll": 0, **pre}, "duration": 0.3})
                    time.sleep(0.6)
                s0 = daemon.state()
                spec = {"worker_id": f"wbench{i:03d}", "system_prompt": system, "task": task["task"], "tool_choice": tool_choice, "act_first": act_first,
                        "robots": [["reachy-mini", mcp_url]], "max_steps": int(pm.get("max_steps", 20)), "tool_timeout_sec": 60.0, "llm": llm_cfg}
                tools, final, steps, took, err = run_worker(spec)
                time.sleep(0.3)
                s = daemon.state()
                fails = worker_checks(task, s, s0, tools)
                finished = final is not None and final.get("done") and not fails
                done += bool(finished)
                secs.append(took)
                rows.append({"task": task["task"], "finished": bool(finished), "seconds": round(took, 1), "steps": steps,
                             "tools": tools, "report": (final or {}).get("message"), "fails": fails})
                print(f"  worker {'ok ' if finished else 'NOT'} {took:5.1f} s {task['task']!r}: tools {tools}; "
                      f"{'; '.join(fails)} report={str((final or {}).get('message'))[:100]!r}", flush=True)
            figures["worker"] = {"tasks": len(rows), "finished": done, "finished_share": round(done / len(rows), 3),
                                 "task_sec_p50": round(pct(secs[1:] or secs, 50), 1), "task_sec_p95": round(pct(secs, 95), 1),
                                 "first_task_sec": round(secs[0], 1), "rows": rows}
            w = figures["worker"]
            print(f"worker: {done}/{len(rows)} tasks finished ({100 * w['finished_share']:.0f} %); task p50 {w['task_sec_p50']} s, "
                  f"p95 {w['task_sec_p95']} s (first task, uncached prefix: {w['first_task_sec']} s)", flush=True)

        # 5. look to your left, end to end
        if not args.no_e2e:
            if not args.url:
                # From an empty prompt cache, as after ./rosa up: the runs above left both prefixes cached.
                graph.stop_node("llm_server")
                (tmp / "llm_server.log").rename(tmp / "llm_server.runs.log")
                graph.start("llm_server", port=port)
                wait_until(lambda: _health(url), 300, "the model to load")
            figures["look_left"] = look_left(graph, daemon, url, args.model, mcp_url, tmp, tool_choice, act_first,
                                             args.e2e_warm_prefix == "on")
            print(f"look left, end to end: head turned {figures['look_left'].get('head_turned_sec')} s after ./rosa say; worker report "
                  f"{figures['look_left'].get('worker_report_sec')} s; kernel report {figures['look_left'].get('kernel_report_sec')} s", flush=True)
        if not args.url:
            pid = llama_pid(DOMAIN)
            figures["rss_mb_after"] = round(rss_mb(pid)) if pid else None
            print(f"llama-server RSS after the runs: {figures['rss_mb_after']} MB")
    finally:
        graph.stop()
        if daemon:
            daemon.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")


def _health(url):
    try:
        with urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/health", timeout=2) as r:
            return json.load(r).get("status") == "ok"
    except (OSError, ValueError):
        return False


def look_left(graph, daemon, url, model, mcp_url, tmp, tool_choice, act_first, warm):
    """The core graph on this LLM: ./rosa say "look to your left" -> the head turns, reports come back.
    With `warm`, the nodes first warm the LLM with their prompt prefixes (their time is reported)."""
    from rosa_interfaces.msg import Update, WorkerCallback
    from std_msgs.msg import String

    robots = tmp / "robots.yaml"
    robots.write_text("robots:\n  - name: reachy-mini\n    url: " + mcp_url + "\n    description: " +
                      yaml.safe_load((ROOT / "config" / "robots.yaml").read_text())["robots"][0]["description"] +
                      f"\n    prompt_file: {ROOT / 'config' / 'prompts' / 'reachy-mini.txt'}\n")
    graph.robots_file = robots
    graph.llm_url = url
    common = {"llm.models": f"['{model}']", "llm.max_retries": 1, "llm.timeout_sec": 300.0,
              "llm.first_token_timeout_sec": 120.0, "llm.stall_timeout_sec": 120.0}
    # the workers' settings of the runs above (./rosa up sets worker_act_first for the embedded model)
    common["warm_prefix"] = str(warm).lower()
    t_start = time.monotonic()
    graph.start("process_manager", worker_tool_choice=tool_choice, worker_act_first=str(act_first).lower(), **common)
    graph.start("kernel", event_deadline_sec=300.0, **common)
    peer = Peer(DOMAIN)
    out = {}
    try:
        peer.listen("/rosa/updates", Update, publishers=2).listen("/rosa/worker_callback", WorkerCallback, publishers=1)
        pub = peer.publisher("/rosa/command", String)
        wait_until(lambda: "kernel ready" in graph.log("kernel"), 30, "the kernel")
        if warm:
            for node, line, key in (("kernel", "the LLM has the kernel's prompt prefix", "kernel_warm_up_sec"),
                                    ("process_manager", "the LLM has a worker's prompt prefix", "worker_warm_up_sec")):
                wait_until(lambda: line in graph.log(node), 600, f"the {node}'s prompt prefix")
                out[key] = round(time.monotonic() - t_start, 1)
            print(f"prompt prefixes processed {out['kernel_warm_up_sec']} s (kernel) and {out['worker_warm_up_sec']} s "
                  f"(worker) after the nodes started", flush=True)
        else:
            time.sleep(11)  # the kernel's first reachability check of the robot
        daemon.post("/api/move/goto", {"head_pose": {"x": 0, "y": 0, "z": 0, "roll": 0, "pitch": 0, "yaw": 0}, "duration": 0.3})
        time.sleep(0.5)
        t0 = time.monotonic()
        subprocess.run([str(ROOT / "rosa"), "say", "look to your left"], check=True, capture_output=True, timeout=60)
        t_say = time.monotonic()
        try:
            wait_until(lambda: daemon.state()["yaw"] > 8 * DEG, 600, "the head to turn left")
            out["head_turned_sec"] = round(time.monotonic() - t0, 1)
        except TimeoutError:
            out["head_turned_sec"] = None
        cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.final, timeout=600)
        t_cb = time.monotonic()
        out["worker_report_sec"] = round(t_cb - t0, 1)
        out["worker_report"] = cb.message
        rep = wait_until(lambda: next((m for t, m in peer.received_at("/rosa/updates") if m.role == "kernel" and t >= t_cb - 0.2), None), 300, "the kernel's report")
        out["kernel_report_sec"] = round(time.monotonic() - t0, 1)
        out["kernel_report"] = rep.text
        out["say_sec"] = round(t_say - t0, 2)
    finally:
        peer.close()
    return out


if __name__ == "__main__":
    main()
