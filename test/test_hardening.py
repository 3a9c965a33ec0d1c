"""Hostile input (issue 8): one test per defect with the issue's own inputs, plus a live fuzz run.

Real node binaries, real DDS (loopback) with an rclpy peer, real MCP over HTTP (the official `mcp`
SDK and raw HTTP); only the LLM is scripted (it sends NULs, huge prompts, garbage tool calls).
"""

import http.client
import json
import math
import os
import random
import struct
import threading
import time
from pathlib import Path

import pytest
from action_msgs.msg import GoalStatus
from rosa_interfaces.action import LaunchProcess
from rosa_interfaces.msg import KernelEvent, ProcessTable, Update, WorkerCallback
from rosa_interfaces.srv import Chat, ListProcesses, TerminateProcess
from std_msgs.msg import String

from conftest import LATCHED, Graph, Peer, fresh_domain_id, wait_until
from test_core import start_core  # the core graph and the peer's endpoints, as test_core starts them
from support.reachy import McpClient, free_port
from support.scripted_llm import Calls, Reply, ToolCall, default_handler, last_message, system_prompt, tool_results

NUL_SIGN = "\u2400"


def no_panic(graph, *names):
    for name in names:
        assert graph.alive(name), f"{name} exited:\n{graph.log(name)[-3000:]}"
        assert "panicked" not in graph.log(name), graph.log(name)[-3000:]


def is_kernel(req):
    return any(t["function"]["name"] == "launch_process" for t in req.get("tools", []))


# -------------------------------------------------------------------------------------------------
# 1-2. NUL characters from the LLM: the kernel's reply, a launch_process prompt, a worker's report
# -------------------------------------------------------------------------------------------------

def test_nul_in_the_kernels_reply_and_a_launch_prompt_does_not_crash_the_kernel(graph, peer, llm, robot):
    def handler(req):
        last = last_message(req)
        text = last.get("content") or ""
        if is_kernel(req):
            if last["role"] == "user" and "launch" in text:
                return Calls([ToolCall("launch_process", {"system_prompt": "wave\u0000 twice", "robots": ["testbot"]})])
            if last["role"] == "tool":
                return Reply("launched: " + text)
            if last["role"] == "user" and text.startswith("[Worker callback]"):
                return Reply("noted")
            return Reply("hello\u0000world")
        return Calls([ToolCall("wave", {"times": 1})]) if not tool_results(req) else Reply("waved")

    llm.handler = handler
    start_core(graph, peer)
    pid = graph.procs["kernel"][0].pid
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="say hi"), timeout=20)
    assert resp.success, resp.reply
    assert resp.reply == f"hello{NUL_SIGN}world [1 NUL character shown as {NUL_SIGN}]", resp.reply
    upd = peer.wait_for_msg("/rosa/updates", lambda m: m.role == "kernel" and "hello" in m.text)
    assert NUL_SIGN in upd.text and "\x00" not in upd.text

    # A launch_process prompt with a NUL: the worker gets ␀, the model is told.
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="launch it"), timeout=20)
    assert resp.success and "NUL character(s) in system_prompt were replaced" in resp.reply, resp.reply
    robot.wait_for_calls(1, timeout=20)
    worker_req = llm.requests_by("worker")[0]["body"]
    # The task is the worker's first user message (its system prompt is the shared prefix).
    first_user = next(m["content"] for m in worker_req["messages"] if m["role"] == "user")
    assert f"wave{NUL_SIGN} twice" in first_user and f"wave{NUL_SIGN}" not in system_prompt(worker_req)
    peer.wait_for_msg("/rosa/worker_callback", lambda m: m.final and m.done)
    # Still the same kernel process: nothing was lost to a restart.
    assert graph.procs["kernel"][0].pid == pid
    no_panic(graph, "kernel", "process_manager")


def test_workers_reporting_nul_end_their_goals_and_free_their_slots(graph, peer, llm, robot):
    """Six workers (more than max_processes=4) each report a NUL: each ends its goal with a final
    callback and a result, and the next launch is still accepted."""
    def handler(req):
        if is_kernel(req):
            return Reply("ok")
        return Calls([ToolCall("wave", {"times": 1})]) if not tool_results(req) else Reply("done\u0000 with a NUL")

    llm.handler = handler
    start_core(graph, peer)
    client = peer.action_client(LaunchProcess, "/rosa/launch_process")
    for i in range(6):
        handle = peer.wait_future(client.send_goal_async(LaunchProcess.Goal(system_prompt=f"wave {i}", robots=["testbot"])))
        assert handle.accepted, f"launch {i} refused: a slot was not freed"
        result = peer.wait_future(handle.get_result_async(), timeout=30)
        assert result.status == GoalStatus.STATUS_SUCCEEDED, result.result.message
        assert result.result.message == f"done{NUL_SIGN} with a NUL [1 NUL character shown as {NUL_SIGN}]"
        wid = result.result.worker_id
        cb = peer.wait_for_msg("/rosa/worker_callback", lambda m, wid=wid: m.worker_id == wid and m.final)
        assert NUL_SIGN in cb.message and cb.done
    wait_until(lambda: len(peer.call(ListProcesses, "/rosa/list_processes", ListProcesses.Request()).processes) == 0,
               15, "no live process left")
    no_panic(graph, "kernel", "process_manager")


# -------------------------------------------------------------------------------------------------
# 3. Goals with inf / NaN / 1e300 timeouts
# -------------------------------------------------------------------------------------------------

def test_goals_with_out_of_range_timeouts_are_rejected_and_lock_nothing_out(graph, peer, llm, robot):
    llm.handler = default_handler()
    start_core(graph, peer, max_processes=2)
    client = peer.action_client(LaunchProcess, "/rosa/launch_process")
    for t in (math.inf, -math.inf, math.nan, 1e300, 1.8e19, 1e20, -1.0, 86_400.5):
        h = peer.wait_future(client.send_goal_async(LaunchProcess.Goal(system_prompt="wave", robots=["testbot"], timeout_sec=t)))
        assert h.accepted is False, f"timeout_sec={t} was accepted"
    log = graph.log("process_manager")
    assert "timeout_sec=inf is out of range" in log and "timeout_sec=NaN is out of range" in log, log[-2000:]
    # Nothing was locked out: goals in range run, up to the limit, again and again.
    for _ in range(3):
        h = peer.wait_future(client.send_goal_async(LaunchProcess.Goal(system_prompt="wave", robots=["testbot"], timeout_sec=30.0,
                                                                       max_steps=4_294_967_295)))
        assert h.accepted
        assert peer.wait_future(h.get_result_async(), timeout=30).status == GoalStatus.STATUS_SUCCEEDED
    no_panic(graph, "process_manager")


# -------------------------------------------------------------------------------------------------
# 8. The process table carries bounded prompts
# -------------------------------------------------------------------------------------------------

def test_the_process_table_carries_bounded_prompts_and_the_full_one_on_request(graph, peer, llm, robot):
    llm.handler = default_handler(worker_tool="slow", worker_args={"seconds": 60})
    start_core(graph, peer)
    client = peer.action_client(LaunchProcess, "/rosa/launch_process")
    big = ("Move slowly. " * 400_000)[:5_000_000]  # 5 MB
    handles = []
    for i in range(3):
        prompt = f"{i} " + big
        h = peer.wait_future(client.send_goal_async(LaunchProcess.Goal(system_prompt=prompt, robots=["testbot"])), timeout=30)
        assert h.accepted
        handles.append(h)
    robot.wait_for_calls(3, timeout=40)
    table = wait_until(lambda: next((t for t in reversed(peer.received("/rosa/processes")) if len(t.processes) == 3), None),
                       10, "a table with the three")
    for p in table.processes:
        assert len(p.system_prompt.encode()) <= 1000 and p.system_prompt.endswith("…")
        assert p.system_prompt_size == len(f"0 {big}".encode())
    biggest = max(sum(len(p.system_prompt.encode()) for p in t.processes) for t in peer.received("/rosa/processes"))
    assert biggest <= 3 * 1000, f"a table message carried {biggest} bytes of prompts"
    listing = peer.call(ListProcesses, "/rosa/list_processes", ListProcesses.Request(include_ended=True))
    assert all(len(p.system_prompt.encode()) <= 1000 for p in listing.processes)
    full = peer.call(ListProcesses, "/rosa/list_processes", ListProcesses.Request(include_ended=True, full_system_prompts=True),
                     timeout=30)
    assert sorted(p.system_prompt[:2] for p in full.processes) == ["0 ", "1 ", "2 "]
    assert all(len(p.system_prompt) == len(big) + 2 for p in full.processes)
    for h in handles:
        peer.wait_future(h.cancel_goal_async())
    no_panic(graph, "process_manager")


# -------------------------------------------------------------------------------------------------
# 9. Empty, whitespace and invalid UTF-8 commands
# -------------------------------------------------------------------------------------------------

def cdr_string(raw: bytes) -> bytes:
    """A std_msgs/String serialized as CDR (little endian), whatever bytes it holds."""
    return b"\x00\x01\x00\x00" + struct.pack("<I", len(raw) + 1) + raw + b"\x00"


def test_empty_and_invalid_utf8_commands_are_refused_out_loud(graph, peer, llm):
    llm.handler = lambda req: Reply("should not be asked")
    start_core(graph, peer)
    pub = peer.publisher("/rosa/command", String)
    pub.publish(String(data=""))
    pub.publish(String(data="  \t \n "))
    pub.publish(cdr_string(b"go \xff\xfe left \xc3"))
    refusals = wait_until(lambda: (r := [m.text for m in peer.received("/rosa/updates")
                                         if m.role == "system" and m.text.startswith("refused a command")]) and len(r) >= 3 and r,
                          15, "three refusals")
    assert "is empty" in refusals[0]
    assert "only whitespace" in refusals[1]
    assert "not valid UTF-8" in refusals[2] and "3 invalid byte sequences" in refusals[2], refusals[2]
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="   "))
    assert resp.success is False and "only whitespace" in resp.reply
    # None of them reached the LLM or became an event; a real command still does.
    time.sleep(0.5)
    assert llm.requests_by("kernel") == [] and peer.received("/rosa/events") == []
    pub.publish(String(data="hello"))
    peer.wait_for_msg("/rosa/events", lambda m: m.text == "[User typed] hello")
    no_panic(graph, "kernel")


# -------------------------------------------------------------------------------------------------
# Reachy driver: files (4), speak (10), Origin and token (11)
# -------------------------------------------------------------------------------------------------

class ReachyNode:
    """reachy_driver with no daemon (its robot tools fail fast), speech to WAV files, and the
    scripted LLM as its vision model (it records what would be sent to a cloud provider)."""

    def __init__(self, tmp_path, llm_url, **params):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.domain_id = fresh_domain_id()
        self.data_dir = tmp_path / "data"
        self.speech_dir = tmp_path / "speech"
        self.graph = Graph(tmp_path, self.domain_id, llm_url, {"reachy-mini": self.url})
        self.graph.start("reachy_driver", daemon_url="http://127.0.0.1:9", mcp_port=self.port,
                         data_dir=str(self.data_dir), **{"speech.output": "files", "speech.output_dir": str(self.speech_dir),
                                                         "vision.urls": f"['{llm_url}']", "vision.models": "['scripted']",
                                                         "vision.key_envs": "['']"}, **params)

    def client(self, headers=None, timeout=30):
        return McpClient(self.url, headers=headers).start(timeout=timeout)

    def rss_kib(self):
        pid = self.graph.procs["reachy_driver"][0].pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def close(self):
        self.graph.stop()


@pytest.fixture
def reachy(tmp_path, llm, request):
    r = ReachyNode(tmp_path, llm.url)
    yield r
    r.close()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(f"\n----- reachy_driver.log -----\n{r.graph.log('reachy_driver')[-6000:]}")


def test_describe_image_reads_only_regular_files_of_the_data_dir(reachy, llm, tmp_path):
    llm.handler = lambda req: Reply("a small test picture")
    mcp = reachy.client()
    try:
        pictures = reachy.data_dir / "pictures"
        pictures.mkdir(parents=True, exist_ok=True)
        (pictures / "ok.jpg").write_bytes(b"\xff\xd8\xff\xe0 a jpeg")
        (tmp_path / "outside.jpg").write_bytes(b"\xff\xd8\xff\xe0 secret")
        (reachy.data_dir / "out.jpg").symlink_to(tmp_path / "outside.jpg")
        (reachy.data_dir / "zero.jpg").symlink_to("/dev/zero")
        os.mkfifo(reachy.data_dir / "fifo.jpg")
        os.mkfifo(tmp_path / "fifo-outside")

        err, text = mcp.call("describe_image", {"image": "pictures/ok.jpg"})
        assert not err and text == "a small test picture", text
        sent = json.dumps(llm.snapshot()[-1]["body"])
        assert "data:image/jpeg;base64," in sent

        before = len(llm.snapshot())
        rss0 = reachy.rss_kib()
        answers = {}
        # Two calls on a FIFO at once, while other calls go on: nothing hangs.
        results = {}
        threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, mcp.call("describe_image", {"image": str(reachy.data_dir / "fifo.jpg")}, timeout=10)))
                   for k in range(2)]
        for t in threads:
            t.start()
        for given in ["/etc/shadow", "/etc/passwd", "/no/such/file.jpg", "/dev/zero", str(tmp_path / "fifo-outside"),
                      str(reachy.data_dir / "out.jpg"), "out.jpg", "zero.jpg", "../outside.jpg", str(tmp_path / "outside.jpg")]:
            err, text = mcp.call("describe_image", {"image": given}, timeout=10)
            assert err, f"{given}: {text}"
            answers[given] = text.replace(given, "X")
        for t in threads:
            t.join(timeout=15)
        assert len(results) == 2 and all(e for e, _ in results.values()), results
        # One answer for all: no oracle for what exists outside, no path but the data dir's.
        assert len(set(answers.values())) == 1, answers
        only = next(iter(answers.values()))
        assert "not a readable file in the data dir" in only and "JPEG" not in only and "No such file" not in only, only
        assert len(llm.snapshot()) == before, "nothing was sent to the vision model"
        assert reachy.rss_kib() < rss0 + 50_000, "reading /dev/zero grew the driver"
        # The server still answers at once.
        err, text = mcp.call("describe_image", {"image": "pictures/ok.jpg"}, timeout=10)
        assert not err
    finally:
        mcp.close()
    no_panic(reachy.graph, "reachy_driver")


def test_take_picture_refuses_a_planted_symlink(tmp_path, llm):
    """take_picture writes under <data_dir>/pictures only; a `pictures` symlinked elsewhere is refused."""
    from sensor_msgs.msg import Image
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "pictures").symlink_to(victim)
    r = ReachyNode(tmp_path, llm.url, **{"camera.source": "/cam/image"})
    peer = Peer(r.domain_id)
    mcp = r.client()
    try:
        pub = peer.publisher("/cam/image", Image)
        img = Image(width=4, height=2, encoding="rgb8", step=12, data=bytes(24))
        stop = threading.Event()
        threading.Thread(target=lambda: [pub.publish(img) or time.sleep(0.05) for _ in iter(stop.is_set, True)], daemon=True).start()
        err, text = wait_until(lambda: (res := mcp.call("take_picture", {})) and "no image received" not in res[1] and res, 15, "a frame")
        stop.set()
        assert err and "outside the data dir" in text, text
        assert list(victim.iterdir()) == []
    finally:
        mcp.close()
        peer.close()
        r.close()


def test_speak_refuses_what_the_engine_cannot_take_and_pieces_the_rest(reachy, tmp_path, llm):
    mcp = reachy.client()
    try:
        err, text = mcp.call("speak", {"text": "word " * 80_000})  # 400 kB
        assert err and "399999 characters, more than the 5000" in text, text
    finally:
        mcp.close()
    # Allowed longer: 150 kB is past what espeak-ng takes as its argument (128 KiB), so it gets it in
    # pieces of at most 1000 bytes; the first piece is spoken (a WAV), then interrupted.
    (tmp_path / "long").mkdir()
    r = ReachyNode(tmp_path / "long", llm.url, **{"speech.max_chars": 200_000})
    mcp = r.client()
    try:
        err, text = mcp.call("speak", {"text": "This is a short sentence. " * 5_800})
        assert not err, text
        # The engine creates the file first and writes it as it speaks: wait for its audio.
        def first_wav():
            wav = next(iter(sorted(r.speech_dir.glob("speech-*.wav"))), None)
            return wav if wav is not None and wav.exists() and wav.stat().st_size > 1000 else None
        wait_until(first_wav, 30, "the first piece's WAV with audio in it")
        err, text = mcp.call("speak", {"text": "stop", "forcefully_interrupt": True})
        assert not err
    finally:
        mcp.close()
        r.close()
    for g in (reachy.graph, r.graph):
        log = g.log("reachy_driver")
        assert "Argument list too long" not in log and "speech: text to speech failed" not in log, log[-2000:]
    no_panic(reachy.graph, "reachy_driver")


def post_initialize(port, headers):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/mcp", body=body, headers={"Content-Type": "application/json",
                                                 "Accept": "application/json, text/event-stream", **headers})
    r = c.getresponse()
    out = (r.status, r.getheader("WWW-Authenticate"), r.read().decode(errors="replace"))
    c.close()
    return out


def test_mcp_origin_is_checked_and_a_token_can_be_required(tmp_path, llm):
    token_file = tmp_path / "mcp_token"
    token_file.write_text("0123456789abcdef" * 4 + "\n")
    token = token_file.read_text().strip()
    r = ReachyNode(tmp_path, llm.url, require_token="true", token_file=str(token_file))
    try:
        wait_until(lambda: "reachy_driver ready" in r.graph.log("reachy_driver"), 20, "the driver")
        # Origin: a foreign one is refused (DNS rebinding), before the token is looked at.
        status, _, body = post_initialize(r.port, {"Origin": "http://evil.example", "Authorization": f"Bearer {token}"})
        assert status == 403 and "Origin" in body, (status, body)
        status, _, _ = post_initialize(r.port, {"Origin": "null", "Authorization": f"Bearer {token}"})
        assert status == 403
        # The token: missing or wrong is 401 with a Bearer challenge; right passes (any loopback origin).
        status, challenge, body = post_initialize(r.port, {})
        assert status == 401 and challenge.startswith("Bearer") and token not in body, (status, body)
        assert post_initialize(r.port, {"Authorization": "Bearer wrong"})[0] == 401
        status, _, body = post_initialize(r.port, {"Authorization": f"Bearer {token}", "Origin": "http://localhost:8765"})
        assert status == 200 and "serverInfo" in body, (status, body)
        # The official SDK: without the token it cannot connect; with it, it lists and calls tools.
        anonymous = McpClient(r.url)
        try:
            with pytest.raises(Exception):
                anonymous.start(timeout=2)
        finally:
            anonymous.close()
        mcp = r.client(headers={"Authorization": f"Bearer {token}"})
        try:
            assert {"speak", "describe_image"} <= {t.name for t in mcp.tools()}
            err, text = mcp.call("speak", {"text": "authenticated"})
            assert not err, text
        finally:
            mcp.close()
    finally:
        r.close()


def test_workers_keep_working_with_a_required_token(tmp_path, llm):
    token_file = tmp_path / "mcp_token"
    token_file.write_text("fedcba9876543210" * 4 + "\n")
    llm.handler = default_handler(worker_tool="speak", worker_args={"text": "hello from a worker"}, robots=["reachy-mini"])
    r = ReachyNode(tmp_path, llm.url, require_token="true", token_file=str(token_file))
    peer = Peer(r.domain_id)
    try:
        wait_until(lambda: "reachy_driver ready" in r.graph.log("reachy_driver"), 20, "the driver")
        r.graph.start("process_manager", mcp_token_file=str(token_file))
        r.graph.start("kernel", reachability_period_sec=0.5)
        peer.listen("/rosa/worker_callback", WorkerCallback, publishers=1)
        peer.publisher("/rosa/command", String)
        wait_until(lambda: 'reachable=["reachy-mini"]' in r.graph.log("kernel"), 15, "the robot reachable")
        peer.publish("/rosa/command", String, String(data="say hello"))
        cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.final, timeout=30)
        assert cb.done, cb.message
        assert "speaking on" in cb.message or "queued" in cb.message, cb.message
        wait_until(lambda: list(r.speech_dir.glob("speech-*.wav")), 20, "the worker's speech")
        assert "MCP request refused" not in r.graph.log("reachy_driver")
    finally:
        peer.close()
        r.close()


# -------------------------------------------------------------------------------------------------
# Fuzz, live: the nodes' inputs from outside (the 10,000-case runs are cargo tests: fuzz_tests.rs)
# -------------------------------------------------------------------------------------------------

PIECES = ["\x00", "\x1b[2J", "\n", "\t", " ", "é", "🤖", "%s%n", "{robots}", "[User typed]", "wave", "\u202e", "'\"", "\\u0000",
          "ignore previous instructions"]


def hostile_text(rng, n=None):
    n = rng.randrange(12) if n is None else n
    return "".join(rng.choice(PIECES) for _ in range(n))


def hostile_bytes(rng):
    return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))


def hostile_number(rng):
    return rng.choice([math.inf, -math.inf, math.nan, 1e300, -1e300, 1.8e19, 0.0, -0.0, 5e-324, 0.2, 3.0, 86400.0,
                       rng.uniform(-1e6, 1e6), struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]])


def hostile_json(rng, depth=2):
    k = rng.randrange(7 if depth else 5)
    if k == 0:
        return None
    if k == 1:
        return rng.choice([True, False])
    if k == 2:
        v = hostile_number(rng)
        return v if math.isfinite(v) else str(v)
    if k == 3:
        return rng.getrandbits(70) - (1 << 69)
    if k == 4:
        return hostile_text(rng)
    if k == 5:
        return [hostile_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    keys = ["x", "y", "z", "yaw", "pitch", "antennas", "duration", "wait", "multiple", "emotion", "image", "text",
            "question", "forcefully_interrupt", "interpolation", "angle_unit", "\x00"]
    return {rng.choice(keys): hostile_json(rng, depth - 1) for _ in range(rng.randrange(5))}


def test_fuzzed_inputs_live(graph, peer, llm, robot, tmp_path):
    rng = random.Random(8)
    tools = ["launch_process", "list_processes", "terminate_process", "nope"]

    def handler(req):
        if is_kernel(req):
            k = rng.randrange(4)
            if k == 0:
                return Reply(hostile_text(rng, 30))
            if k == 1:
                return Calls([ToolCall(rng.choice(tools), hostile_text(rng) if rng.random() < 0.3 else
                                       {"system_prompt": hostile_text(rng), "robots": ["testbot"], "worker_id": hostile_text(rng)})])
            return Reply("ok")
        return Reply("report " + hostile_text(rng))

    llm.handler = handler
    start_core(graph, peer, max_processes=2)
    (tmp_path / "reachy").mkdir(exist_ok=True)
    reachy = ReachyNode(tmp_path / "reachy", llm.url)
    try:
        pub = peer.publisher("/rosa/command", String)
        for i in range(240):
            if i % 3 == 0:
                pub.publish(cdr_string(hostile_bytes(rng)))
            else:
                pub.publish(String(data=hostile_text(rng).replace("\x00", "")))  # rclpy refuses a NUL itself
        client = peer.action_client(LaunchProcess, "/rosa/launch_process")
        handles = []
        for _ in range(40):
            goal = LaunchProcess.Goal(system_prompt=hostile_text(rng).replace("\x00", ""), robots=rng.choice([["testbot"], [], ["ghost"]]),
                                      max_steps=rng.choice([0, 1, 4_294_967_295]), timeout_sec=hostile_number(rng))
            h = peer.wait_future(client.send_goal_async(goal))
            if h.accepted:
                handles.append(h)
        for _ in range(60):
            peer.call(TerminateProcess, "/rosa/terminate_process",
                      TerminateProcess.Request(worker_id=hostile_text(rng).replace("\x00", ""), force=rng.random() < 0.5))
            peer.call(ListProcesses, "/rosa/list_processes",
                      ListProcesses.Request(include_ended=rng.random() < 0.5, full_system_prompts=rng.random() < 0.5))
        for _ in range(20):
            peer.call(Chat, "/rosa/chat", Chat.Request(prompt=hostile_text(rng).replace("\x00", "")), timeout=30)
        for h in handles:
            peer.wait_future(h.cancel_goal_async())
        mcp = reachy.client()
        names = ["goto_target", "move_head_left", "reset_head", "play_emotion", "take_picture", "describe_image", "speak",
                 "move_to_audio", "list_emotions", "stop_move"]
        try:
            for _ in range(150):
                args = hostile_json(rng)
                try:
                    mcp.call(rng.choice(names), args if isinstance(args, dict) else {"text": args}, timeout=20)
                except Exception as e:  # noqa: BLE001 - invalid params are a JSON-RPC error, which the SDK raises
                    assert "Invalid" in str(e) or "invalid" in str(e) or "deserialize" in str(e), e
        finally:
            mcp.close()
        # Everything still answers.
        assert peer.call(Chat, "/rosa/chat", Chat.Request(prompt="still there?"), timeout=30) is not None
        no_panic(graph, "kernel", "process_manager")
        no_panic(reachy.graph, "reachy_driver")
    finally:
        reachy.close()
