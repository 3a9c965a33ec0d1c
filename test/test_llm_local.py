"""The embedded LLM for real: the llm_server node running the local model (Qwen2.5-Coder-1.5B,
installed by ./rosa setup) under llama-server, and `./rosa up` with no LLM flags driving the
simulated Reachy Mini with it.

These use the real model, so they are slow-ish (a few requests each, tens of seconds on two cores).
They are skipped only when ./rosa setup was told --no-local-llm (no model or no llama-server).
"""

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rosa_interfaces.msg import Update, WorkerCallback

from conftest import ROOT, Graph, Peer, fresh_domain_id, kill_processes, marked, stop_supervisor, wait_until
from support.reachy import ReachyDaemon, free_port

MODEL = ROOT / ".rosa" / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
SERVER = ROOT / ".rosa" / "llama" / "bin" / "llama-server"
DEG = 3.141592653589793 / 180

pytestmark = pytest.mark.skipif(not (MODEL.is_file() and SERVER.is_file()),
                                reason="the local LLM is not installed (./rosa setup --no-local-llm)")

KERNEL_TOOLS = [
    {"type": "function", "function": {
        "name": "launch_process",
        "description": "Launch a worker process: an LLM agent that carries out one task with the tools of the given robots, then reports back.",
        "parameters": {"type": "object", "properties": {
            "system_prompt": {"type": "string", "description": "The worker's task, complete and self-contained."},
            "robots": {"type": "array", "items": {"type": "string", "enum": ["reachy-mini"]}}},
            "required": ["system_prompt", "robots"]}}},
    {"type": "function", "function": {"name": "list_processes", "description": "List the running worker processes.",
                                      "parameters": {"type": "object", "properties": {}}}},
]


def post(url, body, timeout=180):
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def test_llm_server_node_serves_the_local_model(tmp_path):
    port = free_port()
    domain = fresh_domain_id()
    g = Graph(tmp_path, domain, "http://127.0.0.1:9/v1", {})
    g.start("llm_server", port=port)
    peer = Peer(domain)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        peer.listen("/diagnostics", DiagnosticArray)
        # A ROS node like the others, with its parameters and diagnostics.
        wait_until(lambda: ("llm_server", "/rosa") in peer.node.get_node_names_and_namespaces(), 20, "/rosa/llm_server in the graph")
        ready = peer.wait_for_msg("/diagnostics", lambda m: any(s.name == "llm_server: local model" and s.level == DiagnosticStatus.OK
                                                               and s.message == "ready" for s in m.status), timeout=150)
        values = {kv.key: kv.value for s in ready.status for kv in s.values}
        assert values["url"] == url and float(values["load_sec"]) > 0 and float(values["rss_mb"]) > 500, values
        with urllib.request.urlopen(url + "/models", timeout=5) as r:
            assert json.load(r)["data"][0]["id"] == "qwen2.5-coder-1.5b-instruct"

        # A tool call, constrained by the grammar from the schemas: well-formed, an offered tool.
        status, _, body = post(url, {"model": "any", "temperature": 0, "max_tokens": 120, "user": "kernel",
                                     "tools": KERNEL_TOOLS, "tool_choice": "required",
                                     "messages": [{"role": "system", "content": "You launch workers for robot tasks."},
                                                  {"role": "user", "content": "[User typed] look to your left"}]})
        assert status == 200
        msg = json.loads(body)["choices"][0]
        assert msg["finish_reason"] == "tool_calls", msg
        call = msg["message"]["tool_calls"][0]["function"]
        assert call["name"] in ("launch_process", "list_processes")
        args = json.loads(call["arguments"])
        if call["name"] == "launch_process":
            assert isinstance(args["system_prompt"], str) and args["robots"] == ["reachy-mini"], args

        # Streamed, with response_format json_schema: the answer is JSON of that schema.
        schema = {"type": "object", "properties": {"direction": {"enum": ["left", "right"]}}, "required": ["direction"]}
        status, ctype, text = post(url, {"stream": True, "temperature": 0, "max_tokens": 30,
                                         "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": schema}},
                                         "messages": [{"role": "user", "content": "Which way is west when you face north? Answer in JSON."}]})
        assert status == 200 and ctype == "text/event-stream"
        events = [e for e in text.split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        content = "".join((json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in events[:-1])
        assert json.loads(content)["direction"] in ("left", "right"), content
        usage = json.loads(events[-2][6:])["usage"]
        assert usage["completion_tokens"] > 0 and usage["timings"]["predicted_per_second"] > 0, usage

        # A bad request is refused with OpenAI's error body.
        req = urllib.request.Request(url + "/chat/completions", data=b'{"messages": []}', headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400 and json.load(e.value)["error"]["param"] == "messages"
        # A node killed with SIGKILL leaves no model server behind.
        assert llama_servers(domain)
        os.kill(g.procs["llm_server"][0].pid, signal.SIGKILL)
        wait_until(lambda: not llama_servers(domain), 10, "llama-server to die with its node")
    finally:
        peer.close()
        g.stop()
        print(g.log("llm_server")[-3000:])


def llama_servers(domain):
    """pids of llama-server processes started in ROS domain `domain`."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().split(b"\0")[0] == str(SERVER).encode() \
                    and f"ROS_DOMAIN_ID={domain}".encode() in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:
            pass
    return found


def test_rosa_up_with_no_llm_flags_turns_the_head_left(tmp_path):
    """`./rosa up` with no LLM flags on a machine with no endpoint and no key: the embedded model
    answers; `./rosa say "look to your left"` turns the simulated head left and the kernel's report
    reaches /rosa/updates."""
    daemon_port, mcp_port, llm_port = free_port(), free_port(), free_port()
    domain = fresh_domain_id()
    log_dir = tmp_path / "logs"
    robots = tmp_path / "robots.yaml"
    robots.write_text(
        "robots:\n  - name: reachy-mini\n"
        f"    url: http://127.0.0.1:{mcp_port}/mcp\n"
        "    description: Reachy Mini, a small expressive robot head with two antennas, a camera, a microphone and a speaker. It can move its head, show emotions, take pictures and speak.\n"
        f"    prompt_file: {ROOT / 'config' / 'prompts' / 'reachy-mini.txt'}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GROQ_API_KEY", "ROSA_LLM_URL", "ROSA_LLM")}
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="1", ROSA_TEST_MARK=str(log_dir),
               # A data dir of its own: the kernel's journal (its memory) must not come from an earlier run.
               ROSA_DATA_DIR=str(tmp_path / "data"))
    up = subprocess.Popen([str(ROOT / "rosa"), "up", "--log-dir", str(log_dir), "--no-stt", "--robots", str(robots),
                           "--daemon-port", str(daemon_port), "--mcp-port", str(mcp_port), "--llm-port", str(llm_port)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sim = ReachyDaemon(tmp_path, port=daemon_port)  # to read the daemon's state only
    peer = Peer(domain)
    out = []

    def pump():
        for line in up.stdout:
            out.append(line)

    import threading
    threading.Thread(target=pump, daemon=True).start()
    try:
        peer.listen("/rosa/updates", Update).listen("/rosa/worker_callback", WorkerCallback)
        wait_until(lambda: any("using the embedded model" in line for line in out), 30, "the provider choice:\n" + "".join(out))
        wait_until(lambda: any("the embedded model is loaded" in line for line in out), 150, "the model to load")
        log = lambda n: (log_dir / f"{n}.log").read_text(errors="replace") if (log_dir / f"{n}.log").exists() else ""
        wait_until(lambda: "reachy_driver ready" in log("reachy_driver") and "kernel ready" in log("kernel"), 90, "the graph")
        wait_until(lambda: peer.node.count_subscribers("/rosa/command") >= 1, 20, "the kernel's subscription")
        # The kernel offers only robots it has seen answer (it checks every reachability_period_sec).
        wait_until(lambda: 'reachable=["reachy-mini"]' in log("kernel"), 30, "the kernel to see the robot")
        yaw0 = sim.state()["yaw"]
        t0 = time.monotonic()
        say = subprocess.run([str(ROOT / "rosa"), "say", "look to your left"], env=env, capture_output=True, text=True, timeout=60)
        assert say.returncode == 0, say.stderr
        cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.final, timeout=400)
        t_cb = time.monotonic()
        took = t_cb - t0
        yaw = sim.state()["yaw"]
        assert yaw > yaw0 + 5 * DEG, f"the head did not turn left: yaw {yaw0:.3f} -> {yaw:.3f} rad; worker said: {cb.message}"
        # The kernel hears the callback and tells the user the outcome.
        report = wait_until(lambda: next((m for t, m in peer.received_at("/rosa/updates")
                                          if m.role == "kernel" and t >= t_cb - 0.5 and m.text.strip()), None),
                            200, "the kernel's report on /rosa/updates")
        print(f"look left: the worker reported after {took:.1f} s ({cb.message!r}); the kernel said: {report.text!r}")
    finally:
        peer.close()
        stop_supervisor(up)
        mark = f"ROSA_TEST_MARK={log_dir}".encode()
        kill_processes(marked(mark))
        print("".join(out)[-6000:])
