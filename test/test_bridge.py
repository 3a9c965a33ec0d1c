"""The mcp_bridge node against a real graph: rclpy fixture robots (test/support/bridge_fixture.py)
on their own namespaces, the real `mcp_bridge` binary, and the official Python MCP SDK over HTTP."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, RECENT, node_binary, wait_until
from support.reachy import McpClient

HERE = Path(__file__).resolve().parent


def bridge_env(domain_id):
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RUST_LOG=env.get("RUST_LOG", "info"), ROSA_CONFIG_DIR=str(ROOT / "config"))
    return env


class Fixture:
    """A fixture robot process; its stdout events collected."""

    def __init__(self, domain_id, ns, action_period=0.1):
        self.ns = ns
        self.events = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "support" / "bridge_fixture.py"), "--ns", ns,
                                      "--action-period", str(action_period)],
                                     env=bridge_env(domain_id), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(lambda: self.of("ready"), 30, f"fixture {ns} ready")

    def _read(self):
        for line in self.proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append(e)

    def of(self, kind):
        with self.lock:
            return [e for e in self.events if e.get("event") == kind]

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


ROBOTS = """\
robots:
  - name: turtle
    description: A small mobile robot (a fixture).
    ros:
      namespace: /r1
      deny: ["secret*"]
      limits:
        - {name: cmd_vel, field: linear.x, min: -0.5, max: 0.5, mode: clamp}
        - {name: cmd_vel, field: angular.z, min: -1.0, max: 1.0, mode: refuse}
      approval: [set_enabled]
      approval_timeout_sec: %(approval_timeout)s
      stop:
        - {topic: cmd_vel, type: geometry_msgs/msg/Twist, msg: {}}
  - name: arm
    description: Another robot.
    ros:
      namespace: /r2
      read_only: %(r2_read_only)s
"""


class Bridge:
    def __init__(self, tmp_path, domain_id, approval_timeout=6.0, r2_read_only="true", extra=()):
        self.tmp = tmp_path
        self.robots = tmp_path / "robots.yaml"
        self.robots.write_text(ROBOTS % {"approval_timeout": approval_timeout, "r2_read_only": r2_read_only})
        self.audit = tmp_path / "audit.jsonl"
        self.log_path = tmp_path / "mcp_bridge.log"
        log = open(self.log_path, "w")
        args = [str(node_binary("mcp_bridge")), "--ros-args", "--params-file", str(ROOT / "config" / "rosa.yaml"),
                "-p", f"robots_file:={self.robots}", "-p", "port:=0", "-p", f"data_dir:={tmp_path}",
                "-p", f"audit_file:={self.audit}", "-p", "timeout_sec:=2.0", *extra]
        self.proc = subprocess.Popen(args, env=bridge_env(domain_id), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        m = wait_until(lambda: re.search(r"mcp_bridge ready.*?addr=127\.0\.0\.1:(\d+)", self.log()), 30, "the bridge ready")
        self.port = int(m.group(1))

    def log(self):
        return self.log_path.read_text(errors="replace")

    def url(self, robot):
        return f"http://127.0.0.1:{self.port}/{robot}/mcp"

    def client(self, robot="turtle"):
        return McpClient(self.url(robot)).start()

    def audit_lines(self):
        if not self.audit.exists():
            return []
        return [json.loads(l) for l in self.audit.read_text().splitlines() if l.strip()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def r1(domain_id):
    f = Fixture(domain_id, "r1")
    yield f
    f.stop()


@pytest.fixture
def bridge(tmp_path, domain_id, request):
    b = Bridge(tmp_path, domain_id)
    yield b
    b.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print("\n----- mcp_bridge.log -----\n" + b.log()[-8000:])


def wait_discovered(client, timeout=20):
    """Until the bridge sees the r1 fixture's topics, services and action."""
    wait_until(lambda: "/r1/battery" in call(client, "list_topics")[1] and "/r1/set_enabled" in call(client, "list_services")[1]
               and "/r1/fibonacci" in call(client, "list_actions")[1], timeout, "the fixture discovered by the bridge")


@pytest.fixture
def turtle(bridge, r1):
    c = bridge.client("turtle")
    wait_discovered(c)
    yield c
    c.close()


def call(client, name, args=None, timeout=30.0):
    err, text = client.call(name, args or {}, timeout=timeout)
    return err, text


def test_tools_are_annotated_and_discovery_is_quick(bridge, domain_id, peer):
    c = bridge.client("turtle")
    try:
        tools = {t.name: t for t in c.tools()}
        for name in ["list_nodes", "list_topics", "list_services", "list_actions", "describe_type", "read_topic",
                     "publish", "call_service", "send_action_goal", "cancel_action_goal", "get_parameters",
                     "set_parameters", "lookup_transform", "watch_topic", "node_details", "list_parameters"]:
            assert name in tools, name
            a = tools[name].annotations
            assert a is not None and a.readOnlyHint is not None and a.destructiveHint is not None, name
        assert tools["read_topic"].annotations.readOnlyHint is True
        assert tools["publish"].annotations.destructiveHint is True
        # A fixture that appears is listed soon after an independent rclpy peer sees it: the bridge
        # asks the live graph, it does not keep a stale list (the figure is printed; its speed is
        # measured by `./rosa bench bridge`, this only bounds it loosely for a loaded machine).
        t_start = time.monotonic()
        f = Fixture(domain_id, "r1")
        try:
            seen = {}

            def peer_sees():
                names = dict(peer.node.get_topic_names_and_types())
                return "/r1/cmd_vel" in names and "/r1/battery" in names

            while True:
                if "peer" not in seen and peer_sees():
                    seen["peer"] = time.monotonic()
                err, text = call(c, "list_topics")
                if "/r1/cmd_vel" in text and "/r1/battery" in text:
                    seen["bridge"] = time.monotonic()
                    break
                assert time.monotonic() - t_start < 20, text
                time.sleep(0.05)
            seen.setdefault("peer", seen["bridge"])
            print(f"listed by the bridge {seen['bridge'] - t_start:.2f} s after the fixture's start, "
                  f"{seen['bridge'] - seen['peer']:.2f} s after the rclpy peer saw it")
            assert seen["bridge"] - seen["peer"] < 10.0
            assert "geometry_msgs/msg/Twist" in text
            assert "/r1/secret_plan" not in text  # denied names are not listed
            err, text = call(c, "list_services")
            assert "/r1/reset [std_srvs/srv/Trigger]" in text
            err, text = call(c, "list_actions")
            assert "/r1/fibonacci [test_msgs/action/Fibonacci]" in text
            # Node names come with their own discovery message, a moment after the topics.
            text = wait_until(lambda: (t := call(c, "list_nodes")[1]) and "/r1/fixture" in t and t, 10, "the node listed")
            assert "/rosa/mcp_bridge" not in text
            err, text = call(c, "describe_type", {"type": "nav_msgs/msg/Odometry"})
            assert not err and "MSG: geometry_msgs/PoseWithCovariance" in text
            err, text = call(c, "node_details", {"node": "fixture"})
            assert not err and "/r1/cmd_vel" in text, text
        finally:
            f.stop()
    finally:
        c.close()


def test_read_with_and_without_traffic(turtle, r1):
    err, text = call(turtle, "read_topic", {"topic": "battery"})
    assert not err, text
    assert '"percentage": 0.9' in text.replace("0.8999999761581421", "0.9")
    err, text = call(turtle, "read_topic", {"topic": "odom", "count": 3})
    assert not err and text.startswith("3 message(s) from /r1/odom (nav_msgs/msg/Odometry)"), text
    # No traffic: a quick error, no hang.
    t0 = time.monotonic()
    err, text = call(turtle, "read_topic", {"topic": "cmd_vel", "type": "geometry_msgs/msg/Twist", "timeout_sec": 0.5})
    assert err and "no message on /r1/cmd_vel" in text, text
    assert time.monotonic() - t0 < 3.0
    # Unknown topic without a type: a clear error.
    err, text = call(turtle, "read_topic", {"topic": "nothing_here"})
    assert err and "not on the graph" in text


def test_publish_reaches_the_fixture_once_with_equal_fields(turtle, r1, bridge):
    err, text = call(turtle, "publish", {"topic": "cmd_vel", "msg": {"linear": {"x": 0.25}, "angular": {"z": -0.5}}})
    assert not err, text
    wait_until(lambda: r1.of("cmd_vel"), 5, "the Twist at the fixture")
    time.sleep(0.5)
    got = r1.of("cmd_vel")
    assert len(got) == 1, got
    assert got[0]["linear"] == [0.25, 0.0, 0.0] and got[0]["angular"] == [0.0, 0.0, -0.5]
    a = [l for l in bridge.audit_lines() if l["tool"] == "publish"]
    assert a and a[-1]["ok"] and a[-1]["name"] == "/r1/cmd_vel" and a[-1]["robot"] == "turtle"


def test_denied_topic_is_refused_naming_the_rule(turtle, r1):
    err, text = call(turtle, "publish", {"topic": "secret_plan", "msg": {"data": "x"}, "type": "std_msgs/msg/String"})
    assert err and "deny `/r1/secret*`" in text, text
    err, text = call(turtle, "publish", {"topic": "/r2/cmd_vel", "msg": {}, "type": "geometry_msgs/msg/Twist"})
    assert err and "outside robot turtle's scope" in text, text
    time.sleep(0.5)
    assert not r1.of("secret_plan")


def test_value_limits_clamp_and_refuse(turtle, r1):
    err, text = call(turtle, "publish", {"topic": "cmd_vel", "msg": {"linear": {"x": 3.0}}})
    assert not err and "limited" in text and "linear.x 3 limited to 0.5" in text, text
    wait_until(lambda: r1.of("cmd_vel"), 5, "the clamped Twist")
    assert r1.of("cmd_vel")[0]["linear"][0] == 0.5
    err, text = call(turtle, "publish", {"topic": "cmd_vel", "msg": {"angular": {"z": 2.0}}})
    assert err and "outside its limit" in text and "refused" in text, text
    err, text = call(turtle, "publish", {"topic": "cmd_vel", "msg": {"linear": {"x": "fast"}}})
    assert err and "linear.x" in text, text
    time.sleep(0.5)
    assert len(r1.of("cmd_vel")) == 1


def test_service_call_and_parameters_visible_from_rclpy(turtle, r1, peer):
    err, text = call(turtle, "call_service", {"service": "reset"})
    assert not err and '"success": true' in text and "reset 1" in text, text
    assert r1.of("reset")
    err, text = call(turtle, "get_parameters", {"node": "fixture", "names": ["max_speed", "label"]})
    assert not err and '"max_speed": 1.0' in text and '"label": "turtle"' in text, text
    err, text = call(turtle, "set_parameters", {"node": "fixture", "parameters": {"max_speed": 0.3}})
    assert not err, text
    from rcl_interfaces.srv import GetParameters
    resp = peer.call(GetParameters, "/r1/fixture/get_parameters", GetParameters.Request(names=["max_speed"]))
    assert resp.values[0].double_value == 0.3
    err, text = call(turtle, "set_parameters", {"node": "fixture", "parameters": {"max_speed": "not a number"}})
    assert err and "refused by the node" in text, text
    err, text = call(turtle, "list_parameters", {"node": "fixture"})
    assert "battery_percentage" in text


def test_action_feedback_result_and_cancel(bridge, domain_id):
    f = Fixture(domain_id, "r1", action_period=0.2)
    c = bridge.client("turtle")
    wait_discovered(c)
    try:
        progress = []

        async def run():
            async def cb(p, total, message):
                progress.append((p, message))
            return await c.session.call_tool("send_action_goal", {"action": "fibonacci", "goal": {"order": 5}},
                                             progress_callback=cb)
        res = c._run(run(), 30)
        text = res.content[0].text
        assert not res.isError, text
        assert "ended SUCCEEDED" in text and "[0, 1, 1, 2, 3, 5, 8]" in text.replace("\n", "").replace("  ", " ") or "8" in text
        assert len(progress) >= 3, progress
        # Cancel: start without waiting, cancel, the fixture sees it.
        err, text = call(c, "send_action_goal", {"action": "fibonacci", "goal": {"order": 100}, "wait": False})
        assert not err, text
        gid = re.search(r"goal ([0-9a-f-]{36})", text).group(1)
        time.sleep(0.5)
        err, text = call(c, "cancel_action_goal", {"action": "fibonacci", "goal_id": gid})
        assert not err, text
        wait_until(lambda: f.of("goal_canceled"), 5, "the goal cancelled at the fixture")
        err, text = call(c, "get_action_result", {"action": "fibonacci", "goal_id": gid, "timeout_sec": 5})
        assert "CANCELED" in text, text
    finally:
        c.close()
        f.stop()


def test_a_long_action_never_reports_a_false_timeout(bridge, domain_id):
    """A 30 s goal (bridge timeout_sec is 2 s) ends with its result, not a timeout."""
    f = Fixture(domain_id, "r1", action_period=1.0)
    c = bridge.client("turtle")
    wait_discovered(c)
    try:
        t0 = time.monotonic()
        err, text = call(c, "send_action_goal", {"action": "fibonacci", "goal": {"order": 30}}, timeout=60)
        assert not err and "ended SUCCEEDED" in text, text
        assert time.monotonic() - t0 >= 29
    finally:
        c.close()
        f.stop()


def test_scope_isolation_between_two_robots(bridge, domain_id):
    f1, f2 = Fixture(domain_id, "r1"), Fixture(domain_id, "r2")
    t, a = bridge.client("turtle"), bridge.client("arm")
    try:
        wait_until(lambda: "/r2/cmd_vel" in call(a, "list_topics")[1], 5, "r2's topics")
        err, text = call(a, "list_topics")
        assert "/r1/" not in text, text
        err, text = call(t, "list_topics")
        assert "/r2/" not in text, text
        err, text = call(a, "read_topic", {"topic": "/r1/battery"})
        assert err and "outside robot arm's scope" in text
        err, text = call(a, "read_topic", {"topic": "battery"})
        assert not err and "/r2/battery" in text
        # r2 is read-only.
        err, text = call(a, "publish", {"topic": "cmd_vel", "msg": {"linear": {"x": 0.1}}})
        assert err and "read-only" in text
        err, text = call(a, "call_service", {"service": "reset"})
        assert err and "read-only" in text
        time.sleep(0.3)
        assert not f2.of("cmd_vel") and not f2.of("reset")
    finally:
        t.close(); a.close(); f1.stop(); f2.stop()


def test_a_2mb_message_gives_a_capped_reply(turtle, r1):
    result = {}

    def read():
        result["r"] = call(turtle, "read_topic", {"topic": "scan", "timeout_sec": 5})
    th = threading.Thread(target=read)
    th.start()
    time.sleep(1.0)
    err, text = call(turtle, "call_service", {"service": "publish_scan"})
    assert not err, text
    th.join(15)
    err, text = result["r"]
    assert not err, text
    assert len(text) < 25_000, len(text)
    assert "more items elided (500000 in all)" in text, text[:2000]


def test_image_topic_as_image_content(turtle, r1):
    res = turtle._run(turtle.session.call_tool("read_topic", {"topic": "camera/image"}), 20)
    assert not res.isError, res.content[0].text
    kinds = [c.type for c in res.content]
    assert "image" in kinds, kinds
    img = next(c for c in res.content if c.type == "image")
    import base64
    data = base64.b64decode(img.data)
    assert img.mimeType == "image/jpeg" and data[:2] == b"\xff\xd8"
    assert len(data) < 100_000


def test_lookup_transform(turtle, r1):
    err, text = call(turtle, "lookup_transform", {"target_frame": "odom", "source_frame": "laser"})
    assert not err, text
    assert "translation [1.0000, 0.2000, 0.1000]" in text, text
    err, text = call(turtle, "lookup_transform", {"target_frame": "odom", "source_frame": "nowhere", "timeout_sec": 0.5})
    assert err and "unknown" in text


def test_parallel_calls_from_two_sessions(bridge, r1):
    a, b = bridge.client("turtle"), bridge.client("turtle")
    wait_discovered(a)
    try:
        async def many(c):
            calls = [c.session.call_tool("read_topic", {"topic": "battery"}),
                     c.session.call_tool("call_service", {"service": "reset"}),
                     c.session.call_tool("list_topics", {}),
                     c.session.call_tool("publish", {"topic": "cmd_vel", "msg": {"linear": {"x": 0.1}}})]
            return await asyncio.gather(*calls)
        ra = asyncio.run_coroutine_threadsafe(many(a), a.loop)
        rb = asyncio.run_coroutine_threadsafe(many(b), b.loop)
        results = ra.result(30) + rb.result(30)
        assert all(not r.isError for r in results), [r.content[0].text for r in results if r.isError]
        wait_until(lambda: len(r1.of("cmd_vel")) == 2 and len(r1.of("reset")) == 2, 5, "both sessions' calls")
    finally:
        a.close(); b.close()


def test_a_fixture_killed_mid_call_gives_an_error_within_the_timeout(bridge, domain_id):
    f = Fixture(domain_id, "r1", action_period=0.5)
    c = bridge.client("turtle")
    wait_discovered(c)
    try:
        err, text = call(c, "read_topic", {"topic": "battery"})
        assert not err
        result = {}

        def read():
            t0 = time.monotonic()
            result["r"] = call(c, "read_topic", {"topic": "battery", "count": 1000, "timeout_sec": 3})
            result["t"] = time.monotonic() - t0
        th = threading.Thread(target=read)
        th.start()
        time.sleep(0.5)
        f.kill()
        th.join(15)
        err, text = result["r"]
        assert result["t"] < 5, result
        assert "only" in text or err, text  # the messages received before the kill, said as short
        t0 = time.monotonic()
        err, text = call(c, "call_service", {"service": "reset", "type": "std_srvs/srv/Trigger", "timeout_sec": 1})
        assert err and ("no server" in text or "timed out" in text), text
        assert time.monotonic() - t0 < 4
    finally:
        c.close()
        f.stop()


def test_approval_approve_deny_and_timeout(turtle, r1, peer, bridge):
    from rosa_interfaces.msg import ApprovalRequest
    from rosa_interfaces.srv import DecideApproval
    peer.listen("/rosa/bridge/approval_requests", ApprovalRequest, qos=RECENT)

    def decide(approve, reason=""):
        req = wait_until(lambda: [m for m in peer.received("/rosa/bridge/approval_requests")
                                  if m.state == ApprovalRequest.PENDING and m.id not in decided], 10, "a pending request")[-1]
        decided.add(req.id)
        assert req.robot == "turtle" and req.tool == "call_service" and req.name == "/r1/set_enabled"
        resp = peer.call(DecideApproval, "/rosa/bridge/decide_approval", DecideApproval.Request(id=req.id, approve=approve, reason=reason))
        assert resp.ok, resp.message

    decided = set()
    for approve in (True, False):
        out = {}
        th = threading.Thread(target=lambda: out.setdefault("r", call(turtle, "call_service", {"service": "set_enabled", "request": {"data": True}})))
        th.start()
        decide(approve, "" if approve else "not now")
        th.join(15)
        err, text = out["r"]
        if approve:
            assert not err and "enabled=True" in text, text
        else:
            assert err and "denied" in text and "not now" in text, text
    assert len(r1.of("set_enabled")) == 1
    # No decision: denied after approval_timeout_sec (6 s: long enough for a decision on a loaded machine).
    t0 = time.monotonic()
    err, text = call(turtle, "call_service", {"service": "set_enabled", "request": {"data": False}})
    assert err and "no approval" in text, text
    assert 5.5 < time.monotonic() - t0 < 15
    assert len(r1.of("set_enabled")) == 1
    resp = peer.call(DecideApproval, "/rosa/bridge/decide_approval", DecideApproval.Request(id="nope", approve=True))
    assert not resp.ok
    outcomes = [l for l in bridge.audit_lines() if l["tool"] == "call_service" and l["name"] == "/r1/set_enabled"]
    assert [l["ok"] for l in outcomes] == [True, False, False]


def test_a_session_that_ends_mid_publish_stops_the_robot(bridge, r1):
    c = bridge.client("turtle")
    wait_discovered(c)
    fut = asyncio.run_coroutine_threadsafe(
        c.session.call_tool("publish", {"topic": "cmd_vel", "msg": {"linear": {"x": 0.3}}, "rate_hz": 10, "duration_sec": 30}), c.loop)
    wait_until(lambda: len(r1.of("cmd_vel")) >= 5, 10, "the robot driven")
    c.close()  # the session ends (DELETE) mid-publish
    zero = wait_until(lambda: [e for e in r1.of("cmd_vel") if e["linear"] == [0.0, 0.0, 0.0]], 10, "the stop command")
    n = len(r1.of("cmd_vel"))
    time.sleep(1.0)
    after = r1.of("cmd_vel")
    # Nothing moving after the stop command.
    assert all(e["linear"][0] == 0.0 for e in after[n - 1:]) and len(after) - n <= 1, after[-5:]
    assert any(l["tool"] == "session_end" and l["ok"] for l in bridge.audit_lines())
    fut.cancel()


def test_triggers_fire_rate_limited_and_bad_conditions_are_errors(turtle, r1, peer):
    from rosa_interfaces.msg import RobotEvent
    peer.listen("/rosa/robot_events", RobotEvent)
    err, text = call(turtle, "watch_topic", {"topic": "battery", "condition": "percentag < 0.2", "message": "x"})
    assert err and "no field `percentag`" in text, text
    err, text = call(turtle, "watch_topic", {"topic": "battery", "condition": "percentage <", "message": "x"})
    assert err and "condition" in text
    err, text = call(turtle, "watch_topic", {"topic": "battery", "condition": "percentage < 0.2", "message": "battery low"})
    assert not err, text
    tid = re.search(r"trigger (\S+):", text).group(1)
    time.sleep(0.5)
    assert not peer.received("/rosa/robot_events")
    err, text = call(turtle, "set_parameters", {"node": "fixture", "parameters": {"battery_percentage": 0.1}})
    assert not err, text
    wait_until(lambda: peer.received("/rosa/robot_events"), 5, "the robot event")
    time.sleep(2.2)
    evs = peer.received("/rosa/robot_events")
    assert 2 <= len(evs) <= 4, len(evs)  # 10 Hz topic, at most once per second
    e = evs[0]
    assert e.robot == "turtle" and e.trigger_id == tid and e.topic == "/r1/battery" and e.message == "battery low"
    err, text = call(turtle, "list_triggers")
    assert tid in text
    err, text = call(turtle, "remove_trigger", {"trigger_id": tid})
    assert not err
    err, text = call(turtle, "list_triggers")
    assert text == "no triggers"


def test_end_to_end_say_drives_the_turtle_and_a_trigger_wakes_the_kernel(tmp_path, domain_id, peer, r1):
    """`./rosa say "drive the turtle forward a little"` → kernel (scripted LLM) → worker on the bridge
    → the fixture receives the Twist; the kernel's watch_topic trigger on the fixture's battery
    brings a [Robot event] to its queue."""
    from rosa_interfaces.msg import KernelEvent
    from support.reachy import free_port
    from support.scripted_llm import Calls, Reply, ScriptedLLM, ToolCall, last_message, tool_names, tool_results
    from conftest import Graph

    def handler(req):
        last = last_message(req)
        text = last.get("content") or ""
        text = text if isinstance(text, str) else json.dumps(text)
        if "launch_process" in tool_names(req):
            if last.get("role") == "user" and text.startswith("[User typed]"):
                return Calls([
                    ToolCall("launch_process", {"system_prompt": "Drive the turtle forward a little: publish a Twist "
                                                "with linear.x 0.2 on cmd_vel.", "robots": ["turtle"]}),
                    ToolCall("watch_topic", {"robot": "turtle", "topic": "battery", "condition": "percentage < 0.5",
                                             "message": "the turtle's battery is low", "once": True}),
                ])
            if last.get("role") == "user" and text.startswith("[Robot event]"):
                return Reply("The turtle's battery is low.")
            return Reply("ok")
        if not tool_results(req):
            return Calls([ToolCall("publish", {"topic": "cmd_vel", "msg": {"linear": {"x": 0.2}}})])
        return Reply("Done: " + tool_results(req)[-1])

    port = free_port()
    with ScriptedLLM(handler) as llm:
        g = Graph(tmp_path, domain_id, llm.url, {})
        g.robots_file.write_text(f"robots:\n  - name: turtle\n    url: http://127.0.0.1:{port}/turtle/mcp\n"
                                 "    description: A small mobile robot (a fixture).\n    ros:\n      namespace: /r1\n"
                                 "      limits: [{name: cmd_vel, field: linear.x, max: 0.5}]\n")
        try:
            g.start("mcp_bridge", port=port, data_dir=str(tmp_path))
            # The kernel offers reachable robots only: the bridge first.
            wait_until(lambda: "mcp_bridge ready" in g.log("mcp_bridge"), 30, "the bridge")
            g.start("process_manager")
            g.start("kernel")
            peer.listen("/rosa/events", KernelEvent, publishers=1)
            wait_until(lambda: "kernel ready" in g.log("kernel"), 30, "the kernel")
            env = dict(g.env())
            subprocess.run([str(ROOT / "rosa"), "say", "drive the turtle forward a little"], env=env, check=True, timeout=60)
            got = wait_until(lambda: r1.of("cmd_vel"), 60, "the Twist at the fixture")
            assert got[0]["linear"] == [0.2, 0.0, 0.0]
            ev = peer.wait_for_msg("/rosa/events", lambda m: m.source == "worker_callback", timeout=30)
            assert "Done: published 1 geometry_msgs/msg/Twist message(s) on /r1/cmd_vel" in ev.text, ev.text
            # The trigger: the battery drops below 50 %.
            from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
            from rcl_interfaces.srv import SetParameters
            peer.call(SetParameters, "/r1/fixture/set_parameters", SetParameters.Request(parameters=[
                Parameter(name="battery_percentage", value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.1))]))
            ev = peer.wait_for_msg("/rosa/events", lambda m: m.source == "robot_event", timeout=20)
            assert ev.text.startswith("[Robot event] the turtle's battery is low (robot=turtle, topic=/r1/battery, trigger="), ev.text
            kreq = [r for r in llm.requests if r["role"] == "kernel"][0]["body"]
            assert {"watch_topic", "list_triggers", "remove_trigger"} <= {t["function"]["name"] for t in kreq["tools"]}
        finally:
            g.stop()
