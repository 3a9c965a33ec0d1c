"""rosa as a ROS 2 package: declared parameters (set through the rcl_interfaces services, as `ros2
param` does), `/rosout`, `/diagnostics`' rate, the launch file's parameters, escaped logs, and the
real `ros2` CLI and `ros2 launch` when they are installed.

Real node binaries and DDS (loopback); an rclpy peer is the independent client.
"""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import Log, Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import (DescribeParameters, GetParameters, GetParameterTypes, ListParameters, SetParameters,
                                SetParametersAtomically)
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosa_interfaces.msg import ProcessTable, Update
from rosa_interfaces.srv import Chat, ListProcesses
from std_msgs.msg import String

from conftest import LATCHED, ROOT, Graph, Peer, fresh_domain_id, node_binary, stop_supervisor, wait_until
from support.scripted_llm import Reply, ScriptedLLM, last_message

# rcl's /rosout publishers: reliable, transient-local, keep last 1000.
ROSOUT = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
INFO, WARN = 20, 30


def value(v):
    """A ParameterValue typed as `ros2 param set` types its YAML."""
    if isinstance(v, bool):
        return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=v)
    if isinstance(v, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=v)
    if isinstance(v, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=v)
    if isinstance(v, str):
        return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=v)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=v)
    raise TypeError(v)


def set_params(peer, node, values):
    req = SetParameters.Request(parameters=[Parameter(name=k, value=value(v)) for k, v in values.items()])
    return peer.call(SetParameters, f"{node}/set_parameters", req).results


def get_param(peer, node, name):
    v = peer.call(GetParameters, f"{node}/get_parameters", GetParameters.Request(names=[name])).values[0]
    return {ParameterType.PARAMETER_BOOL: v.bool_value, ParameterType.PARAMETER_INTEGER: v.integer_value,
            ParameterType.PARAMETER_DOUBLE: v.double_value, ParameterType.PARAMETER_STRING: v.string_value,
            ParameterType.PARAMETER_STRING_ARRAY: list(v.string_array_value)}.get(v.type)


def names(peer, node):
    return set(peer.call(ListParameters, f"{node}/list_parameters", ListParameters.Request()).result.names)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------------------------------------
# Parameters
# -------------------------------------------------------------------------------------------------

def test_parameters_are_declared_with_types_descriptions_ranges_and_read_only(graph, peer):
    graph.start("process_manager")
    graph.start("reachy_driver", daemon_url=f"http://127.0.0.1:{free_port()}", mcp_port=free_port(),
                **{"speech.output": "files"})
    pm = names(peer, "/rosa/process_manager")
    assert {"max_processes", "timeout_sec", "llm.urls", "llm.models", "robots_file", "warm_workers"} <= pm
    assert "queue_size" not in pm and "prompt_file" not in pm  # the kernel's
    # The driver declares its own parameters only: not the /** section's llm.* and robots_file.
    driver = names(peer, "/rosa/reachy_driver")
    assert {"daemon_url", "publish_rate_hz", "vision.urls", "speech.engine"} <= driver
    assert not {n for n in driver if n.startswith("llm.") or n == "robots_file"}, driver

    d = peer.call(DescribeParameters, "/rosa/process_manager/describe_parameters",
                  DescribeParameters.Request(names=["max_processes", "robots_file", "llm.timeout_sec", "llm.urls"])).descriptors
    mp, rf, timeout, urls = d
    assert mp.type == ParameterType.PARAMETER_INTEGER and "Concurrent workers" in mp.description
    assert not mp.read_only and (mp.integer_range[0].from_value, mp.integer_range[0].to_value) == (0, 256)
    assert rf.type == ParameterType.PARAMETER_STRING and rf.read_only and "restart" in rf.additional_constraints
    assert timeout.type == ParameterType.PARAMETER_DOUBLE and timeout.floating_point_range[0].from_value == 0.1
    assert urls.type == ParameterType.PARAMETER_STRING_ARRAY and not urls.read_only
    types = peer.call(GetParameterTypes, "/rosa/process_manager/get_parameter_types",
                      GetParameterTypes.Request(names=["max_processes", "nope"])).types
    assert list(types) == [ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_NOT_SET]


def test_a_set_takes_effect_at_once_and_bad_sets_are_refused_with_the_reason(graph, peer):
    graph.start("process_manager")
    peer.listen("/rosa/processes", ProcessTable, LATCHED, publishers=1)
    assert get_param(peer, "/rosa/process_manager", "max_processes") == 4

    [ok] = set_params(peer, "/rosa/process_manager", {"max_processes": 1})
    assert ok.successful, ok.reason
    # In effect when the set is answered: the service and the published table say so.
    assert peer.call(ListProcesses, "/rosa/list_processes", ListProcesses.Request()).max_processes == 1
    peer.wait_for_msg("/rosa/processes", lambda t: t.max_processes == 1, timeout=5)

    refusals = {
        "max_processes": ("four", "is an integer; got a string"),
        "timeout_sec": ("long", "is a double; got a string"),
        "warm_workers": (99, "out of its range [0, 16]"),
        "robots_file": ("/tmp/other.yaml", "read-only"),
        "no_such_parameter": (1, "not declared"),
    }
    for name, (v, why) in refusals.items():
        [r] = set_params(peer, "/rosa/process_manager", {name: v})
        assert not r.successful and why in r.reason, (name, r.reason)
    assert get_param(peer, "/rosa/process_manager", "max_processes") == 1
    assert get_param(peer, "/rosa/process_manager", "robots_file") == str(graph.robots_file)
    # An integer is taken for a double (as YAML writes 5 for 5.0).
    [r] = set_params(peer, "/rosa/process_manager", {"timeout_sec": 5})
    assert r.successful and get_param(peer, "/rosa/process_manager", "timeout_sec") == 5.0

    # Atomically: all or nothing.
    req = SetParametersAtomically.Request(parameters=[Parameter(name="max_processes", value=value(3)),
                                                      Parameter(name="robots_file", value=value("x.yaml"))])
    r = peer.call(SetParametersAtomically, "/rosa/process_manager/set_parameters_atomically", req).result
    assert not r.successful and "read-only" in r.reason
    assert get_param(peer, "/rosa/process_manager", "max_processes") == 1
    assert graph.alive("process_manager")
    assert "parameters set: max_processes" in graph.log("process_manager")


def test_the_kernel_moves_to_a_new_llm_provider_when_llm_urls_is_set(graph, peer, llm):
    llm.handler = lambda req: Reply("from the first provider")
    with ScriptedLLM(lambda req: Reply("from the second provider: " + (last_message(req).get("content") or ""))) as other:
        graph.start("process_manager")
        graph.start("kernel")
        assert peer.call(Chat, "/rosa/chat", Chat.Request(prompt="one"), timeout=20).reply == "from the first provider"
        results = set_params(peer, "/rosa/kernel", {"llm.urls": [other.url], "max_steps": 2})
        assert all(r.successful for r in results), [r.reason for r in results]
        resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt="two"), timeout=20)
        assert resp.reply == "from the second provider: [User typed] two"
        assert len(other.snapshot()) == 1
        # An empty provider list is refused: the kernel would have no model.
        [r] = set_params(peer, "/rosa/kernel", {"llm.urls": [""]})
        assert not r.successful and "no provider" in r.reason
        [r] = set_params(peer, "/rosa/kernel", {"queue_size": 10})
        assert not r.successful and "read-only" in r.reason


def test_a_bad_value_at_start_is_a_configuration_error_not_a_crash_loop(graph):
    p = graph.start("process_manager", max_processes="four")
    assert p.wait(timeout=20) == 78
    assert "parameter `max_processes` is an integer; got a string" in graph.log("process_manager")


# -------------------------------------------------------------------------------------------------
# /rosout and the logs
# -------------------------------------------------------------------------------------------------

def rosout(peer, name):
    return [m for m in peer.received("/rosout") if m.name == name]


def test_tracing_output_goes_to_rosout_with_the_node_name_and_level(graph, peer, llm):
    llm.handler = lambda req: Reply("done")
    peer.listen("/rosout", Log, ROSOUT)
    graph.start("process_manager")
    graph.start("kernel")
    ready = wait_until(lambda: [m for m in rosout(peer, "rosa.kernel") if "kernel ready" in m.msg], 20, "kernel ready on /rosout")
    assert ready[0].level == INFO and ready[0].file.endswith(".rs") and ready[0].line > 0
    wait_until(lambda: [m for m in rosout(peer, "rosa.process_manager") if "process manager ready" in m.msg], 20,
               "process manager ready on /rosout")
    [r] = set_params(peer, "/rosa/process_manager", {"max_processes": 9999})
    assert not r.successful
    # A refused command is a warning.
    peer.publish("/rosa/command", String, String(data="   "))
    peer.call(Chat, "/rosa/chat", Chat.Request(prompt="hello"), timeout=20)
    wait_until(lambda: [m for m in rosout(peer, "rosa.kernel") if "says: done" in m.msg], 10, "the reply on /rosout")


def test_control_characters_in_a_command_are_escaped_in_the_logs(graph, peer, llm):
    llm.handler = lambda req: Reply("ok\nINFO kernel ready forged=2")
    peer.listen("/rosout", Log, ROSOUT)
    graph.start("process_manager")
    graph.start("kernel")
    attack = "hi\nINFO kernel ready forged=1\x1b[31m\x1b]0;pwned\x07\r\u202e"
    resp = peer.call(Chat, "/rosa/chat", Chat.Request(prompt=attack), timeout=20)
    assert resp.success
    wait_until(lambda: "forged=2" in graph.log("kernel"), 10, "the reply in the kernel's log")
    log = graph.log("kernel")
    # Each event is one line: the forged text only appears inside the line of the event carrying it.
    for line in log.splitlines():
        if "forged=" in line:
            assert "event" in line or "says:" in line, line
            assert not line.startswith("INFO") and "\\n" in line, line
    assert "\x1b" not in log and "\x07" not in log and "\r" not in log and "\u202e" not in log
    assert "\\u{1b}[31m" in log and "\\u{202e}" in log
    said = wait_until(lambda: [m for m in rosout(peer, "rosa.kernel") if "forged=1" in m.msg], 10, "the event on /rosout")
    assert "\n" not in said[0].msg and "\\n" in said[0].msg


def test_a_log_storm_is_rate_limited_on_rosout_and_kept_in_stderr(graph, peer, llm):
    release = {"go": False}

    def handler(req):
        while not release["go"]:
            time.sleep(0.01)
        return Reply("ack")

    llm.handler = handler
    peer.listen("/rosout", Log, ROSOUT)
    peer.listen("/rosa/updates", Update, publishers=0)
    graph.start("process_manager")
    graph.start("kernel", queue_size=1)
    wait_until(lambda: [m for m in rosout(peer, "rosa.kernel") if "kernel ready" in m.msg], 20, "kernel ready on /rosout")
    pub = peer.publisher("/rosa/command", String)
    before = len(rosout(peer, "rosa.kernel"))
    t0 = time.monotonic()
    for i in range(1000):
        pub.publish(String(data=f"storm {i}"))
        if i % 20 == 19:
            time.sleep(0.01)  # r2r's subscription channel holds 10: let the kernel keep up
    refusals = lambda: graph.log("kernel").count("refused [User typed] storm")
    # Every refusal is in the node's stderr log (when the count stops growing)...
    seen = [-1]

    def settled():
        n = refusals()
        done, seen[0] = n == seen[0] and n > 0, n
        return done

    wait_until(lambda: time.sleep(0.5) or settled(), 30, "the refusals in the log")
    elapsed = time.monotonic() - t0
    n = refusals()
    assert n >= 300, n  # a storm: more than the burst, faster than the rate
    time.sleep(1.0)
    storm = rosout(peer, "rosa.kernel")[before:]
    # ...while /rosout got at most the burst plus the rate over the storm (and the notes).
    assert len(storm) <= 100 + 20 * (elapsed + 1.0) + 5, (len(storm), n, elapsed)
    assert len(storm) < n, (len(storm), n)
    print(f"log storm: {n} refusals logged to stderr, {len(storm)} messages on /rosout, in {elapsed:.1f} s")
    release["go"] = True
    note = wait_until(lambda: [m for m in rosout(peer, "rosa.kernel") if "were not published on /rosout" in m.msg], 15,
                      "the count of what was not published")
    assert note[0].level == WARN


# -------------------------------------------------------------------------------------------------
# /diagnostics
# -------------------------------------------------------------------------------------------------

def test_diagnostics_are_one_status_per_period_while_the_daemon_is_down(graph, peer):
    peer.listen("/diagnostics", DiagnosticArray)
    graph.start("reachy_driver", daemon_url=f"http://127.0.0.1:{free_port()}", mcp_port=free_port(),
                reconnect_sec=0.2, **{"speech.output": "files", "speech.output_dir": str(graph.tmp / "speech")})
    wait_until(lambda: peer.received("/diagnostics"), 20, "a first status")
    t0 = time.monotonic()
    time.sleep(6.0)
    got = [(t, m) for t, m in peer.received_at("/diagnostics") if t >= t0]
    times = [t for t, _ in got]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(m.status[0].level == DiagnosticStatus.ERROR for _, m in got)
    assert 5 <= len(got) <= 7, (len(got), gaps)
    assert min(gaps) > 0.7, gaps


# -------------------------------------------------------------------------------------------------
# The launch file
# -------------------------------------------------------------------------------------------------

def launch_module():
    spec = importlib.util.spec_from_file_location("bringup_launch", ROOT / "launch" / "bringup.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # the helpers need no launch packages
    return mod


def test_the_launch_arguments_become_typed_parameters_the_nodes_accept(tmp_path, graph, peer, llm):
    mod = launch_module()
    args = {"llm_url": llm.url, "llm_model": "scripted", "llm_key_env": "", "robots_file": str(graph.robots_file),
            "audio_source": "none", "stt_model": "", "daemon_url": ""}
    path = mod.write_overrides(mod.launch_overrides(args))
    text = Path(path).read_text()
    assert "!!" not in text and "&id" not in text  # no python tags, no aliases (rcl refuses both)
    doc = yaml.safe_load(text)
    kernel = doc["/rosa/kernel"]["ros__parameters"]
    assert kernel["llm.urls"] == [llm.url] and kernel["llm.models"] == ["scripted"] and kernel["llm.key_envs"] == [""]
    assert doc["/rosa/stt"]["ros__parameters"] == {"audio_source": "none"}
    assert "/rosa/reachy_driver" not in doc
    assert mod.launch_overrides({k: "" for k in args}) == {}
    # rcl parses it after config/rosa.yaml, as launch_ros passes both, and the nodes take it.
    llm.handler = lambda req: Reply("launched")
    env = graph.env()
    procs = []
    for name in ("process_manager", "kernel"):
        log = open(tmp_path / f"{name}.log", "w")
        procs.append((subprocess.Popen([str(node_binary(name)), "--ros-args", "-r", f"__node:={name}", "-r", "__ns:=/rosa",
                                        "--params-file", str(ROOT / "config" / "rosa.yaml"), "--params-file", path],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))
        graph.procs[name] = procs[-1]
    assert get_param(peer, "/rosa/kernel", "llm.urls") == [llm.url]
    assert get_param(peer, "/rosa/kernel", "llm.key_envs") == [""]
    assert get_param(peer, "/rosa/process_manager", "robots_file") == str(graph.robots_file)
    assert peer.call(Chat, "/rosa/chat", Chat.Request(prompt="hi"), timeout=20).reply == "launched"
    os.unlink(path)


# -------------------------------------------------------------------------------------------------
# The real CLI (upstream ros2cli, launch, launch_ros), when installed
# -------------------------------------------------------------------------------------------------

def cli_available():
    if not shutil.which("ros2"):
        return "the `ros2` command is not on PATH"
    r = subprocess.run([sys.executable, "-c", "import launch_ros, ros2launch, ros2param"], capture_output=True)
    if r.returncode != 0:
        return "launch_ros / ros2launch / ros2param are not importable"
    return None


def ros2(*args, env, timeout=30, cwd=None):
    return subprocess.run(["ros2", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def ros2_until(ok, *args, env, timeout=30):
    """`ros2 …` again until `ok(output)` (a fresh CLI node may not have discovered the graph yet)."""
    last = {}

    def attempt():
        r = ros2(*args, env=env)
        last["out"] = r.stdout + r.stderr
        return ok(last["out"])

    try:
        wait_until(attempt, timeout, f"ros2 {' '.join(args)}")
    except TimeoutError:
        raise AssertionError(f"ros2 {' '.join(args)}: {last.get('out')}")
    return last["out"]


def pids(name, domain_id):
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv0 = (d / "cmdline").read_bytes().split(b"\0")[0].decode()
                env = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv0.endswith(f"/rosa/lib/rosa/{name}") and f"ROS_DOMAIN_ID={domain_id}".encode() in env:
                found.append(int(d.name))
    return found


def test_ros2_launch_and_the_ros2_cli(tmp_path, llm, capsys):
    why = cli_available()
    if why:
        with capsys.disabled():
            print(f"\nSKIPPED test_ros2_launch_and_the_ros2_cli: {why} (install ros2cli, launch and launch_ros to run it)")
        pytest.skip(why)
    llm.handler = lambda req: Reply("from ros2 launch")
    domain = fresh_domain_id()
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROSA_CONFIG_DIR=str(ROOT / "config"))
    robots = tmp_path / "robots.yaml"
    robots.write_text("robots: []\n")
    launch_out = open(tmp_path / "launch.log", "w")
    # From a directory that is not the checkout's root (see README), with every kind of argument;
    # stt with a model that does not exist: a configuration error, exit code 78.
    launch = subprocess.Popen(["ros2", "launch", "rosa", "bringup.launch.py", f"llm_url:={llm.url}", "llm_model:=scripted",
                               f"robots_file:={robots}", "with_reachy:=false", "audio_source:=none",
                               f"stt_model:={tmp_path}/missing.bin"],
                              cwd=tmp_path, env=env, stdout=launch_out, stderr=subprocess.STDOUT, start_new_session=True)
    log = lambda: (tmp_path / "launch.log").read_text(errors="replace")
    try:
        node = "/rosa/process_manager"
        wait_until(lambda: "Integer value is: 4" in ros2("param", "get", "--no-daemon", node, "max_processes", env=env).stdout,
                   40, f"ros2 param get {node} max_processes")
        out = ros2_until(lambda o: "Set parameter" in o, "param", "set", "--no-daemon", node, "max_processes", "1", env=env)
        assert "Set parameter successful" in out, out
        out = ros2_until(lambda o: "response:" in o, "service", "call", "/rosa/list_processes", "rosa_interfaces/srv/ListProcesses", "{}", env=env)
        assert "max_processes=1" in out, out
        out = ros2_until(lambda o: "parameter" in o.lower() and "Node not found" not in o, "param", "set", "--no-daemon", node, "max_processes", "four", env=env)
        assert "Setting parameter failed" in out and "is an integer; got a string" in out, out
        out = ros2_until(lambda o: "Node not found" not in o, "param", "set", "--no-daemon", node, "robots_file", "x.yaml", env=env)
        assert "Setting parameter failed" in out and "read-only" in out, out
        out = ros2_until(lambda o: "Node not found" not in o, "param", "describe", "--no-daemon", node, "max_processes", env=env)
        assert "Concurrent workers" in out and "Min value: 0" in out and "Max value: 256" in out, out
        out = ros2_until(lambda o: "response:" in o, "service", "call", "/rosa/chat", "rosa_interfaces/srv/Chat", "{prompt: 'hi'}", env=env, timeout=60)
        assert "from ros2 launch" in out, out
        # The kernel respawns after kill -9; stt (exit 78) does not.
        [kernel] = wait_until(lambda: pids("kernel", domain), 10, "the kernel")
        os.kill(kernel, signal.SIGKILL)
        wait_until(lambda: (p := pids("kernel", domain)) and p != [kernel], 20, "the kernel to be respawned")
        wait_until(lambda: "stt exited with code 78" in log(), 30, "stt's configuration error")
        time.sleep(3)
        assert not pids("stt", domain)
        starts = [l for l in log().splitlines() if "[stt-" in l and "process started with pid" in l]
        assert len(starts) == 1, starts
        out = ros2_until(lambda o: "name: rosa." in o, "topic", "echo", "--once", "/rosout", "rcl_interfaces/msg/Log", env=env)
        assert "level: 20" in out or "level: 30" in out, out
    finally:
        stop_supervisor(launch)
        launch_out.close()
        for name in ("kernel", "process_manager", "stt", "worker"):
            for pid in pids(name, domain):
                os.kill(pid, signal.SIGKILL)


# -------------------------------------------------------------------------------------------------
# ./rosa up's terminal
# -------------------------------------------------------------------------------------------------

def test_rosa_up_prints_one_escaped_line_per_event(tmp_path, domain_id, llm, peer):
    llm.handler = lambda req: Reply("done")
    log_dir = tmp_path / "logs"
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROSA_DATA_DIR=str(tmp_path / "data"))
    up = subprocess.Popen([str(ROOT / "rosa"), "up", "--no-web", "--llm-url", llm.url, "--llm-model", "scripted",
                           "--log-dir", str(log_dir), "--no-sim", "--no-stt"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    kernel_log = log_dir / "kernel.log"
    try:
        wait_until(lambda: kernel_log.exists() and "kernel ready" in kernel_log.read_text(), 30, "the kernel to start")
        peer.publish("/rosa/command", String, String(data="hi\n[kernel] INFO kernel ready forged=1\x1b[2J\x1b]0;x\x07"))
        wait_until(lambda: "says: done" in kernel_log.read_text(), 20, "the kernel's reply")
    finally:
        stop_supervisor(up)
    out = up.stdout.read().decode("utf-8", errors="replace")
    assert "\x1b" not in out and "\x07" not in out
    forged = [line for line in out.splitlines() if "forged=1" in line]
    assert forged and all(line.startswith("[kernel] ") and " event " in line and "hi\\n[kernel]" in line for line in forged), forged
    for line in kernel_log.read_text().splitlines():
        assert "forged=1" not in line or " event " in line, line


def test_the_supervisor_escapes_whatever_a_process_prints():
    sys.path.insert(0, str(ROOT / "tools"))
    import supervise

    assert supervise.escape("plain ünïcode") == "plain ünïcode"
    assert supervise.escape("a\rb\tc\x1b[31m\x00\x9b\u2028\u202e") == "a\\rb\\tc\\u{1b}[31m\\u{0}\\u{9b}\\u{2028}\\u{202e}"
