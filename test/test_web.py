"""rosa_web against the real graph: roslibjs 2.x (node), roslibpy, raw WebSockets, the Foxglove
protocol client (@foxglove/ws-protocol) and headless Chromium (puppeteer-core driving Debian's
chromium). Real rosa nodes, an independent rclpy peer; only the LLM is scripted.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import websocket  # websocket-client
from rosa_interfaces.msg import KernelEvent, ProcessTable, Update
from std_msgs.msg import String

from conftest import LATCHED, RECENT, kill_processes, wait_until
from support.scripted_llm import default_handler

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
ARTEFACTS = Path(os.environ.get("ROSA_TEST_ARTEFACTS", HERE.parent / "log" / "test-artefacts"))


def start_web(graph, **params):
    """Start rosa_web on a free port; returns its base URL (http://127.0.0.1:PORT)."""
    params.setdefault("ports", "[0]")
    graph.start("rosa_web", **params)
    found = wait_until(lambda: re.search(r"listening on http://([0-9.]+:\d+)/", graph.log("rosa_web")), 20, "rosa_web to listen")
    return "http://" + found.group(1)


def ws_url(base):
    return base.replace("http://", "ws://") + "/"


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def threads(pid):
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


class Roslibjs:
    """test/web/roslibjs_driver.mjs: roslibjs 2.x in node, one JSON command per line."""

    def __init__(self, url):
        if not (NODE_MODULES / "roslib").exists():
            pytest.fail("test/node_modules is missing: run ./rosa setup (npm ci in test/)")
        self.p = subprocess.Popen(["node", str(HERE / "web" / "roslibjs_driver.mjs"), url], cwd=HERE, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.n = 0
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self._wait(0, 15)

    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    self.lines.append({"n": -1, "raw": line})
                self.cond.notify_all()

    def _wait(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for r in self.lines:
                    if r.get("n") == n:
                        return r
                left = deadline - time.monotonic()
                if left <= 0 or self.p.poll() is not None:
                    raise TimeoutError(f"roslibjs: no answer to command {n} (stderr: {self.p.stderr.read() if self.p.poll() is not None else ''})")
                self.cond.wait(left)

    def __call__(self, cmd, timeout=20, **kw):
        self.n += 1
        self.p.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.p.stdin.flush()
        r = self._wait(self.n, timeout)
        assert "error" not in r, r
        return r

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


@pytest.fixture
def js():
    clients = []

    def make(url):
        c = Roslibjs(url)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def raw_ws(base, **kw):
    return websocket.create_connection(ws_url(base), timeout=10, **kw)


def recv_op(ws, op, timeout=10, pred=lambda m: True):
    """The next text frame with this op (other frames are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(0.05, deadline - time.monotonic()))
        data = ws.recv()
        if isinstance(data, bytes):
            continue
        m = json.loads(data)
        if m.get("op") == op and pred(m):
            return m
    raise TimeoutError(f"no {op}")


# ---------------------------------------------------------------------------------------------
# roslibjs 2.x
# ---------------------------------------------------------------------------------------------

def test_roslibjs_topics_and_200_updates_at_20hz_with_equal_fields(graph, peer, js):
    base = start_web(graph)
    pub = peer.node.create_publisher(Update, "/rosa/updates", RECENT)
    c = js(ws_url(base))
    wait_until(lambda: "/rosa/updates" in c("topics")["topics"], 10, "/rosa/updates in getTopics")
    t = c("topics")
    assert t["types"][t["topics"].index("/rosa/updates")] == "rosa_interfaces/msg/Update"
    assert "/rosout" in t["topics"] and t["types"][t["topics"].index("/rosout")] == "rcl_interfaces/msg/Log"
    c("subscribe", topic="/rosa/updates", type="rosa_interfaces/msg/Update", key="u")
    wait_until(lambda: pub.get_subscription_count() >= 1, 10, "rosa_web's subscription")
    time.sleep(0.3)
    sent = []
    for i in range(200):
        m = Update(role="worker" if i % 2 else "kernel", text=f"update {i} ünïcødé <b>", worker_id=f"w{i:08x}")
        m.stamp.sec, m.stamp.nanosec = 1000 + i, i * 1000
        pub.publish(m)
        sent.append(m)
        time.sleep(0.05)
    got = wait_until(lambda: (lambda ms: ms if len(ms) >= 200 else None)(c("received", key="u")["messages"]), 10, "200 updates")
    assert len(got) == 200
    for m, g in zip(sent, [x["m"] for x in got]):
        assert g == {"role": m.role, "text": m.text, "worker_id": m.worker_id, "stamp": {"sec": m.stamp.sec, "nanosec": m.stamp.nanosec}}


def test_roslibjs_late_subscriber_gets_the_transient_local_process_table(graph, peer, js):
    graph.start("process_manager")
    peer.listen("/rosa/processes", ProcessTable, LATCHED, publishers=1)
    peer.wait_for_msg("/rosa/processes")
    base = start_web(graph)
    c = js(ws_url(base))
    c("subscribe", topic="/rosa/processes", type="rosa_interfaces/msg/ProcessTable", key="p")
    got = wait_until(lambda: c("received", key="p")["messages"], 10, "the latched table")
    assert got[0]["m"]["max_processes"] == 4 and got[0]["m"]["processes"] == []


def test_roslibjs_publish_reaches_the_kernel_and_services_and_params_work(graph, peer, js, llm):
    graph.start("process_manager")
    graph.start("kernel")
    peer.listen("/rosa/events", KernelEvent, publishers=1)
    base = start_web(graph)
    c = js(ws_url(base))
    wait_until(lambda: peer.node.count_subscribers("/rosa/command") >= 1, 15, "the kernel's subscription")
    c("publish", topic="/rosa/command", type="std_msgs/msg/String", msg={"data": "hello from roslibjs"})
    ev = peer.wait_for_msg("/rosa/events", lambda m: "hello from roslibjs" in m.text, timeout=15)
    assert ev.source == "command" and ev.text.startswith("[User typed]")

    r = c("call", name="/rosa/list_processes", type="rosa_interfaces/srv/ListProcesses", args={})
    assert r["ok"], r
    assert r["response"]["max_processes"] == 4 and isinstance(r["response"]["processes"], list)
    bad = c("call", name="/rosa/list_processes", type="rosa_interfaces/srv/ListProcesses", args={"no_such_field": 1})
    assert not bad["ok"] and "no_such_field" in bad["reason"]

    # Param get/set through rosapi (relative names, as roslibjs calls them).
    assert c("param_get", name="/rosa/kernel:max_steps") == {"n": c.n, "ok": True, "value": 8}
    assert c("param_set", name="/rosa/kernel:max_steps", value=5)["ok"]
    assert c("param_get", name="/rosa/kernel:max_steps")["value"] == 5
    ro = c("param_set", name="/rosa/kernel:queue_size", value=3)
    assert not ro["ok"] and "read" in ro["reason"].lower()
    assert "/rosa/kernel" in c("nodes")["nodes"]


def test_roslibjs_launch_goal_feedback_result_and_cancel(graph, peer, js, llm, robot):
    llm.handler = default_handler(worker_tool="slow", worker_args={"seconds": 30.0})
    graph.start("process_manager")
    peer.listen("/rosa/processes", ProcessTable, LATCHED, publishers=1)
    base = start_web(graph)
    c = js(ws_url(base))
    c("goal", key="g", name="/rosa/launch_process", type="rosa_interfaces/action/LaunchProcess",
      goal={"system_prompt": "sleep", "robots": ["testbot"]})
    robot.wait_for_calls(1, timeout=20)
    st = wait_until(lambda: (lambda s: s if any(f.get("last_tool") == "slow" for f in s["feedback"]) else None)(c("goal_state", key="g")), 15, "feedback naming the tool")
    wid = st["feedback"][0]["worker_id"]
    assert wid.startswith("w")
    c("cancel", key="g")
    st = wait_until(lambda: (lambda s: s if s["failed"] or s["result"] else None)(c("goal_state", key="g")), 20, "the goal to end")
    # roslibjs hands a result that did not succeed (status 5, CANCELED) to its failed callback,
    # with the result's values.
    assert st["result"] is None and st["failed"].startswith("GoalError: Action was canceled"), st
    assert wid in st["failed"], st

    pids = {p.pid for t in peer.received("/rosa/processes") for p in t.processes if p.worker_id == wid and p.pid > 0}
    assert pids, "the worker was in the table with its pid"

    def ended():
        tables = peer.received("/rosa/processes")
        rows = [p for p in tables[-1].processes if p.worker_id == wid] if tables else []
        return not rows or rows[0].state not in ("running", "starting", "ready")
    wait_until(ended, 15, "the worker to end in the table")
    # Its OS process is gone (the process manager's warm, idle workers are other processes).
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 15, "the worker process to be gone")


def test_roslibjs_throttle_fragments_cbor_and_cbor_raw(graph, peer, js):
    base = start_web(graph)
    pub = peer.node.create_publisher(String, "/web_test/s", 10)
    c = js(ws_url(base))
    c("subscribe", topic="/web_test/s", type="std_msgs/msg/String", key="throttled", throttle_rate=500, queue_length=1)
    c("subscribe_fragmented", topic="/web_test/s", type="std_msgs/msg/String", key="frag", fragment_size=7)
    wait_until(lambda: pub.get_subscription_count() >= 1, 10, "rosa_web's subscription")
    time.sleep(0.3)
    for i in range(20):
        pub.publish(String(data=f"message number {i} " + "x" * 40))
        time.sleep(0.05)
    time.sleep(1.0)
    thr = c("received", key="throttled")["messages"]
    # 1 s of messages at 20 Hz, throttled to one per 500 ms: the first, then the latest held ones.
    assert 2 <= len(thr) <= 4, thr
    assert thr[-1]["m"]["data"].startswith("message number 19")
    frag = c("received", key="frag")["messages"]
    assert [m["m"]["data"] for m in frag][-1].startswith("message number 19")
    js2 = js(ws_url(base))
    js2("subscribe", topic="/web_test/s", type="std_msgs/msg/String", key="cbor", compression="cbor")
    js2("subscribe", topic="/web_test/b", type="std_msgs/msg/UInt8MultiArray", key="bytes", compression="cbor")
    js3 = js(ws_url(base))
    js3("subscribe", topic="/web_test/s", type="std_msgs/msg/String", key="raw", compression="cbor-raw")
    time.sleep(0.5)
    pub.publish(String(data="cbor!"))
    from std_msgs.msg import UInt8MultiArray
    bpub = peer.node.create_publisher(UInt8MultiArray, "/web_test/b", 10)
    wait_until(lambda: bpub.get_subscription_count() >= 1, 10, "the bytes subscription")
    time.sleep(0.3)
    bpub.publish(UInt8MultiArray(data=bytes([0, 1, 2, 255])))
    got = wait_until(lambda: js2("received", key="cbor")["messages"], 10, "a cbor message")
    assert got[0]["m"] == {"data": "cbor!"}
    b = wait_until(lambda: js2("received", key="bytes")["messages"], 10, "a cbor uint8[]")
    assert b[0]["m"]["data"] == {"bytes": [0, 1, 2, 255]}
    raw = wait_until(lambda: js3("received", key="raw")["messages"], 10, "a cbor-raw message")
    cdr = bytes(raw[0]["m"]["bytes"]["bytes"])
    # The CDR as rclpy put it on the wire: encapsulation header, length 6, "cbor!\0".
    assert cdr[:4] == b"\x00\x01\x00\x00" and cdr[4:8] == (6).to_bytes(4, "little") and cdr[8:14] == b"cbor!\x00"
    assert raw[0]["m"]["secs"] > 1_600_000_000


# ---------------------------------------------------------------------------------------------
# roslibpy
# ---------------------------------------------------------------------------------------------

def test_roslibpy_topics_subscribe_publish_and_service(graph, peer):
    import roslibpy
    graph.start("process_manager")
    base = start_web(graph)
    host, port = base.replace("http://", "").split(":")
    ros = roslibpy.Ros(host=host, port=int(port))
    ros.run(timeout=10)
    try:
        assert ros.is_connected
        topics = wait_until(lambda: (lambda t: t if "/rosa/processes" in t else None)(ros.get_topics()), 10, "topics")
        assert ros.get_topic_type("/rosa/processes") == "rosa_interfaces/msg/ProcessTable"
        got = []
        roslibpy.Topic(ros, "/rosa/processes", "rosa_interfaces/msg/ProcessTable").subscribe(got.append)
        wait_until(lambda: got, 10, "the process table")
        assert got[0]["max_processes"] == 4
        resp = roslibpy.Service(ros, "/rosa/list_processes", "rosa_interfaces/srv/ListProcesses").call(roslibpy.ServiceRequest({}), timeout=10)
        assert resp["max_processes"] == 4
        peer.listen("/web_test/py", String)
        t = roslibpy.Topic(ros, "/web_test/py", "std_msgs/msg/String")
        t.advertise()
        wait_until(lambda: peer.node.count_publishers("/web_test/py") >= 1, 10, "rosa_web's publisher")
        time.sleep(0.3)
        t.publish(roslibpy.Message({"data": "from roslibpy"}))
        assert peer.wait_for_msg("/web_test/py").data == "from roslibpy"
        assert "/rosa/list_processes" in ros.get_services()
    finally:
        ros.close()


# ---------------------------------------------------------------------------------------------
# Hostile and slow clients
# ---------------------------------------------------------------------------------------------

MALFORMED = [
    "not json", "{", "[]", "42", "null", '"op"', "{}", '{"op": 5}', '{"op": "no_such_op"}',
    '{"op": "subscribe"}', '{"op": "subscribe", "topic": 7}', '{"op": "subscribe", "topic": "/x", "type": "no/such/Type"}',
    '{"op": "subscribe", "topic": "/x", "type": "bad type"}', '{"op": "publish", "topic": "/x"}',
    '{"op": "publish", "topic": "/web_test/m", "type": "std_msgs/msg/String", "msg": {"data": 5}}',
    '{"op": "publish", "topic": "/web_test/m", "type": "std_msgs/msg/String", "msg": {"nope": 1}}',
    '{"op": "call_service", "service": 3}', '{"op": "advertise", "topic": "/x"}',
    '{"op": "fragment", "id": "f", "data": "x", "num": 5, "total": 2}', '{"op": "fragment"}',
    '{"op": "fragment", "id": "g", "data": "{{{", "num": 0, "total": 1}', '{"op": "set_level", "level": "loud"}',
    '{"op": "cancel_action_goal", "id": "nope"}', '{"op": "service_response", "id": "nope"}',
    '{"op": "subscribe", "topic": "/x", "type": "std_msgs/msg/String", "throttle_rate": -1}',
    '{"op": "send_action_goal", "action": 1}', '{"op": "advertise_action", "action": "/a", "type": "x/action/Y"}',
    "\u0000\u0001binary-ish", '{"op": "subscribe", "topic": "/x", "type": "std_msgs/msg/String", "compression": "zip"}',
]


def test_1000_malformed_frames_get_status_errors_and_the_connection_lives(graph, peer):
    base = start_web(graph)
    ws = raw_ws(base)
    other = raw_ws(base)
    errors = 0
    for i in range(1000):
        frame = MALFORMED[i % len(MALFORMED)]
        ws.send(frame)
    deadline = time.monotonic() + 30
    while errors < 1000 and time.monotonic() < deadline:
        ws.settimeout(5)
        m = json.loads(ws.recv())
        if m.get("op") == "status" and m.get("level") == "error":
            assert m["msg"], m
            errors += 1
    assert errors == 1000
    # Still alive: a valid request on this socket and on another.
    for s in (ws, other):
        s.send(json.dumps({"op": "call_service", "id": "ok", "service": "/rosapi/get_ros_version", "args": {}}))
        r = recv_op(s, "service_response", pred=lambda m: m.get("id") == "ok")
        assert r["result"] is True and r["values"]["version"] == 2
    ws.close()
    other.close()
    assert graph.alive("rosa_web")


def test_named_errors_oversize_and_unknown_types(graph, peer):
    base = start_web(graph, max_message_size=4096)
    ws = raw_ws(base)
    ws.send('{"op": "subscribe", "id": "s1", "topic": "/x", "type": "no_pkg/msg/Nope"}')
    m = recv_op(ws, "status")
    assert m["id"] == "s1" and "no_pkg" in m["msg"]
    ws.send(json.dumps({"op": "publish", "topic": "/web_test/m", "type": "std_msgs/msg/String", "msg": {"data": "x" * 10000}}))
    m = recv_op(ws, "status")
    assert "max_message_size" in m["msg"]
    ws.send(json.dumps({"op": "publish", "topic": "/web_test/m", "type": "std_msgs/msg/String", "msg": {"data": 1}}))
    m = recv_op(ws, "status")
    assert "data" in m["msg"] and "string" in m["msg"]
    ws.send(json.dumps({"op": "call_service", "id": "v", "service": "rosapi/get_ros_version"}))
    assert recv_op(ws, "service_response")["values"]["distro"]


def test_globs_limit_what_clients_reach(graph, peer):
    base = start_web(graph, topics_glob="['/rosa/*']", services_glob="['/rosa/*']")
    ws = raw_ws(base)
    ws.send('{"op": "subscribe", "id": "no", "topic": "/secret", "type": "std_msgs/msg/String"}')
    m = recv_op(ws, "status")
    assert "not allowed" in m["msg"] and "/secret" in m["msg"]
    ws.send('{"op": "call_service", "id": "c", "service": "/other/srv", "type": "std_srvs/srv/Trigger"}')
    r = recv_op(ws, "service_response", pred=lambda m: m.get("id") == "c")
    assert r["result"] is False and "not allowed" in r["values"]
    ws.send('{"op": "call_service", "id": "t", "service": "/rosapi/topics"}')
    r = recv_op(ws, "service_response", pred=lambda m: m.get("id") == "t")
    assert all(t.startswith("/rosa/") for t in r["values"]["topics"])


def test_origin_allow_list_and_token_beyond_loopback(graph, peer, tmp_path):
    base = start_web(graph)
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        raw_ws(base, origin="http://evil.example.com")
    assert e.value.status_code == 403
    raw_ws(base, origin="http://127.0.0.1:1234").close()
    # Bound beyond loopback (0.0.0.0; we connect on loopback): the token is required.
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o600)
    graph.procs.pop("rosa_web")[0].terminate()
    graph.start("rosa_web", ports="[0]", bind="0.0.0.0", token_file=str(token_file))
    found = wait_until(lambda: re.findall(r"listening on http://([0-9.]+):(\d+)/", graph.log("rosa_web")), 20, "rosa_web to listen")
    port = found[-1][1]
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=5)
    assert e.value.status_code == 401
    websocket.create_connection(f"ws://127.0.0.1:{port}/?token=s3cret-token", timeout=5).close()
    websocket.create_connection(f"ws://127.0.0.1:{port}/", header=["Authorization: Bearer s3cret-token"], timeout=5).close()


def test_100_connect_subscribe_drop_cycles_leave_rss_and_threads_as_before(graph, peer):
    base = start_web(graph)
    pid = graph.procs["rosa_web"][0].pid
    pub = peer.node.create_publisher(String, "/web_test/cycle", 10)

    def cycle():
        ws = raw_ws(base)
        ws.send('{"op": "subscribe", "topic": "/web_test/cycle", "type": "std_msgs/msg/String"}')
        ws.send('{"op": "call_service", "id": "x", "service": "/rosapi/nodes"}')
        recv_op(ws, "service_response")
        ws.close()

    for _ in range(10):
        cycle()
    time.sleep(1.0)
    rss0, thr0 = rss_kb(pid), threads(pid)
    for _ in range(100):
        cycle()
        pub.publish(String(data="tick"))
    time.sleep(1.5)
    rss1, thr1 = rss_kb(pid), threads(pid)
    assert thr1 <= thr0 + 1, (thr0, thr1)
    assert rss1 <= rss0 + 4096, (rss0, rss1)  # KiB
    assert wait_until(lambda: peer.node.count_subscribers("/web_test/cycle") == 0 or None, 10, "subscriptions to be gone")


def test_a_stalled_client_does_not_delay_others(graph, peer):
    base = start_web(graph, client_queue=100)
    pub = peer.node.create_publisher(String, "/web_test/flood", 100)
    # The stalled client: subscribes, then never reads (a small receive buffer fills at once).
    stalled = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    stalled.recv(1024)
    sub = json.dumps({"op": "subscribe", "topic": "/web_test/flood", "type": "std_msgs/msg/String"}).encode()
    mask = b"\x00\x00\x00\x00"
    stalled.sendall(bytes([0x81, 0x80 | 126]) + len(sub).to_bytes(2, "big") + mask + sub)
    good = raw_ws(base)
    good.send(json.dumps({"op": "subscribe", "topic": "/web_test/flood", "type": "std_msgs/msg/String"}))
    wait_until(lambda: pub.get_subscription_count() >= 2, 10, "both subscriptions")
    time.sleep(0.3)
    big = "y" * 100_000
    latencies = []
    good.settimeout(5)
    for i in range(300):
        t0 = time.monotonic()
        pub.publish(String(data=f"{i} {big}"))
        while True:
            m = json.loads(good.recv())
            if m.get("op") == "publish" and m["msg"]["data"].startswith(f"{i} "):
                break
        latencies.append(time.monotonic() - t0)
    latencies.sort()
    # 30 MB to a client that reads nothing: the good client still gets every message (100 kB of
    # JSON each, decoded here in Python), promptly: the stalled one's queue drops instead.
    assert latencies[len(latencies) // 2] < 0.25, latencies[len(latencies) // 2]
    good.close()
    stalled.close()
    # The stalled client lost the oldest of its messages, and says how many when it goes.
    found = wait_until(lambda: (lambda f: f if len(f) >= 2 else None)(re.findall(r"rosbridge client disconnected.*dropped=(\d+)", graph.log("rosa_web"))),
                       15, "both clients' disconnect lines")
    assert max(int(d) for d in found) > 0, found


# ---------------------------------------------------------------------------------------------
# Foxglove WebSocket protocol
# ---------------------------------------------------------------------------------------------

def test_foxglove_client_server_info_channels_cdr_and_client_publish(graph, peer):
    graph.start("process_manager")
    peer.listen("/rosa/processes", ProcessTable, LATCHED, publishers=1)
    peer.listen("/web_test/fox_in", String)
    base = start_web(graph)
    out = subprocess.run(["node", str(HERE / "web" / "foxglove_check.mjs"), ws_url(base)], cwd=HERE, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["protocol"] in ("foxglove.sdk.v1", "foxglove.websocket.v1")
    assert "clientPublish" in r["serverInfo"]["capabilities"] and r["serverInfo"]["supportedEncodings"] == ["cdr"]
    assert r["channel"]["encoding"] == "cdr" and r["channel"]["schemaEncoding"] == "ros2msg"
    assert r["parsedDefinitions"] >= 2  # ProcessTable, ProcessInfo, Time...
    assert r["decoded"]["max_processes"] == 4 and r["decoded"]["processes"] == []
    assert r["service"]["max_processes"] == 4
    assert peer.wait_for_msg("/web_test/fox_in").data == "from foxglove"


# ---------------------------------------------------------------------------------------------
# The browser UI in headless Chromium
# ---------------------------------------------------------------------------------------------

def test_ui_offline_chat_updates_processes_escaping_and_reconnect(graph, peer, llm, robot):
    if not shutil.which("chromium"):
        pytest.fail("Debian's chromium is missing: run ./rosa setup")
    llm.handler = default_handler(worker_tool="slow", worker_args={"seconds": 30.0})
    graph.start("process_manager")
    graph.start("kernel")
    peer.listen("/rosa/processes", ProcessTable, LATCHED, publishers=1)
    base = start_web(graph)
    port = base.rsplit(":", 1)[1]
    pub = peer.node.create_publisher(Update, "/rosa/updates", RECENT)
    wait_until(lambda: peer.node.count_subscribers("/rosa/command") >= 1, 15, "the kernel")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="rosa-ui-")
    p = subprocess.Popen(["node", str(HERE / "web" / "ui_check.mjs"), base, str(ARTEFACTS)], cwd=HERE, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                         env=dict(os.environ, ROSA_UI_PROFILE=profile))
    steps = {}

    def expect(step, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            m = json.loads(line)
            steps[m["step"]] = m
            if m["step"] == step:
                return m
            if m["step"] == "error":
                pytest.fail(f"ui_check: {m}")
        pytest.fail(f"ui_check: no step {step} (stderr {p.stderr.read() if p.poll() is not None else ''})")

    try:
        expect("loaded")
        # An Update from rclpy appears (within 500 ms, measured in the page), as text.
        m = Update(role="worker", text='<img src=x onerror="window.pwned=1">', worker_id="wdeadbeef")
        p.stdin.write("publish\n"); p.stdin.flush()
        t_pub = time.time()
        pub.publish(m)
        r = expect("update_seen")
        assert r["ms_since"] - t_pub * 1000 < 500, r
        assert r["pwned"] is False and r["text"] == m.text
        # A typed command shows the kernel's reply.
        r = expect("kernel_replied", timeout=40)
        assert r["reply"]
        # The process table follows a launched goal, Terminate ends it.
        r = expect("terminated", timeout=60)
        assert r["state"] != "running"
        # Server restart → the page reconnects without reload.
        expect("ready_for_restart")
        graph.procs.pop("rosa_web")[0].terminate()
        time.sleep(1.0)
        graph.start("rosa_web", ports=f"[{port}]")
        r = expect("reconnected", timeout=40)
        assert r["reloaded"] is False
        r = expect("done", timeout=20)
        assert r["consoleErrors"] == [], r
        assert r["externalRequests"] == [], r
    finally:
        # ui_check closes its browser when it is done; killed before that, it would leave Chromium
        # (puppeteer starts it in a process group of its own) running: stop what uses the profile.
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        kill_processes(lambda d: profile.encode() in (d / "cmdline").read_bytes())
        shutil.rmtree(profile, ignore_errors=True)
