"""Fixtures for rosa's integration tests.

The real node binaries (from the colcon install) are started as OS processes; an independent rclpy
node drives them through the same topics, services and actions a user would. The LLM is a scripted
OpenAI-compatible server and the robot a small MCP server, both started by the tests
(test/support/). Every test gets its own ROS_DOMAIN_ID and loopback-only discovery, and every
process a test starts is stopped at teardown.
"""

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from support.mcp_recorder import McpRecorder  # noqa: E402
from support.scripted_llm import ScriptedLLM  # noqa: E402

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# rosa's Fast DDS profile (UDP on 127.0.0.1 only) for the peer and the nodes.
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_loopback.xml"))

import rclpy  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402


def install_prefix():
    return Path(os.environ.get("ROSA_INSTALL", ROOT / "install"))


def node_binary(name):
    exe = install_prefix() / "rosa" / "lib" / "rosa" / name
    if not exe.exists():
        pytest.fail(f"{exe} is missing: run ./rosa build first")
    return exe


_domains = itertools.count()


def fresh_domain_id():
    """Distinct per test and per pytest process (ROS domain ids 0..101 are safe with Fast DDS).

    ROSA_TEST_DOMAINS=FIRST-LAST confines a run to that range, so that checkouts testing at the
    same time on one machine never share a domain."""
    span = os.environ.get("ROSA_TEST_DOMAINS", "")
    if span:
        first, last = (int(x) for x in span.split("-"))
        return first + next(_domains) % (last - first + 1)
    base = 1 + (os.getpid() * 7) % 60
    return base + next(_domains) % 40


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# The conversation topics keep recent history for late joiners (see ros::recent in the nodes).
RECENT = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Peer:
    """An independent rclpy node spinning in a background thread."""

    def __init__(self, domain_id):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"test_peer_{os.getpid()}", context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        # Held while the executor spins: rclpy's ActionClient.send_goal_async registers its future
        # only after sending the request, so a fast server's reply taken by the spinning thread in
        # between is dropped ("Ignoring unexpected goal response") and the caller waits forever.
        self.spin_lock = threading.RLock()
        self.msgs = defaultdict(list)
        self._pubs = {}
        self._clients = {}
        self._stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while not self._stop and self.ctx.ok():
            with self.spin_lock:
                self.executor.spin_once(timeout_sec=0.02)

    def listen(self, topic, msg_type, qos=None, publishers=0, timeout=15.0):
        """Subscribe; with `publishers`, also wait until that many publishers of the topic are
        discovered (a volatile topic delivers nothing from a publisher not yet matched)."""
        def cb(msg, topic=topic):
            with self.lock:
                self.msgs[topic].append((time.monotonic(), msg))

        if qos is None:
            qos = RECENT if topic in ("/rosa/updates", "/rosa/events", "/rosa/worker_callback") else RELIABLE
        self.node.create_subscription(msg_type, topic, cb, qos)
        if publishers:
            wait_until(lambda: self.node.count_publishers(topic) >= publishers, timeout, f"{publishers} publisher(s) of {topic}")
        return self

    def received(self, topic):
        with self.lock:
            return [m for _, m in self.msgs[topic]]

    def received_at(self, topic):
        with self.lock:
            return list(self.msgs[topic])

    def wait_for_msg(self, topic, pred=lambda m: True, timeout=15.0):
        def find():
            for m in self.received(topic):
                if pred(m):
                    return m
            return None

        return wait_until(find, timeout, f"a message on {topic} matching the condition (got {self.received(topic)!r:.2000})")

    def publisher(self, topic, msg_type, subscribers=1, timeout=15.0):
        key = (topic, msg_type)
        if key not in self._pubs:
            self._pubs[key] = self.node.create_publisher(msg_type, topic, RELIABLE)
        pub = self._pubs[key]
        wait_until(lambda: pub.get_subscription_count() >= subscribers, timeout, f"a subscriber on {topic}")
        return pub

    def publish(self, topic, msg_type, msg):
        self.publisher(topic, msg_type).publish(msg)

    # Clients are created once and kept: "ready" means the request path is matched, while the
    # server's reply writer may match the client's reader a moment later, and a reply sent before
    # that is lost. A client that has been around since the graph came up does not hit that window.
    def client(self, srv_type, name, timeout=15.0):
        key = ("srv", srv_type, name)
        if key not in self._clients:
            self._clients[key] = self.node.create_client(srv_type, name)
        client = self._clients[key]
        wait_until(client.service_is_ready, timeout, f"service {name}")
        return client

    def call(self, srv_type, name, request, timeout=15.0):
        fut = self.client(srv_type, name, timeout).call_async(request)
        wait_until(fut.done, timeout, f"the answer of {name}")
        return fut.result()

    def action_client(self, action_type, name, timeout=15.0):
        key = ("action", action_type, name)
        if key not in self._clients:
            client = ActionClient(self.node, action_type, name)
            # The same holds for cancel and result requests: send them while the executor is idle.
            for method in ("send_goal_async", "_cancel_goal_async", "_get_result_async"):
                setattr(client, method, self._between_spins(getattr(client, method)))
            self._clients[key] = client
        client = self._clients[key]
        wait_until(client.server_is_ready, timeout, f"action server {name}")
        return client

    def _between_spins(self, send):
        def locked(*args, **kwargs):
            with self.spin_lock:
                return send(*args, **kwargs)
        return locked

    @staticmethod
    def wait_future(fut, timeout=15.0, what="a future"):
        wait_until(fut.done, timeout, what)
        return fut.result()

    def close(self):
        self._stop = True
        self.thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


class Graph:
    """The rosa nodes as OS processes with their logs in the test's tmp dir."""

    def __init__(self, tmp_path, domain_id, llm_url, robots):
        self.tmp = tmp_path
        self.domain_id = domain_id
        self.llm_url = llm_url
        self.robots_file = tmp_path / "robots.yaml"
        lines = ["robots:"]
        for name, url in robots.items():
            lines += [f"  - name: {name}", f"    url: {url}", f"    description: test robot {name}"]
        self.robots_file.write_text("\n".join(lines) + "\n")
        self.procs = {}

    def env(self):
        env = dict(os.environ)
        # Each test's own data dir: the kernel's and the process manager's journals live there.
        env.update(ROS_DOMAIN_ID=str(self.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   RUST_LOG=env.get("RUST_LOG", "info"), ROSA_CONFIG_DIR=str(ROOT / "config"),
                   ROSA_DATA_DIR=str(self.tmp / "data"))
        return env

    def start(self, name, **params):
        args = [str(node_binary(name)), "--ros-args", "--params-file", str(ROOT / "config" / "rosa.yaml"),
                "-p", f"llm.urls:=['{params.pop('llm_url', self.llm_url)}']",
                "-p", "llm.models:=['scripted']", "-p", "llm.key_envs:=['']",
                "-p", "llm.max_retries:=0", "-p", "llm.connect_timeout_sec:=1.0",
                "-p", f"robots_file:={self.robots_file}"]
        for k, v in params.items():
            args += ["-p", f"{k}:={v}"]
        log = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = (subprocess.Popen(args, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True), log)
        return self.procs[name][0]

    def alive(self, name):
        return self.procs[name][0].poll() is None

    def log(self, name):
        p = self.tmp / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    @staticmethod
    def _reap(p, log, timeout=8):
        """Wait for a node told to stop (SIGKILL after `timeout`) and close its log."""
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()

    def stop_node(self, name, timeout=8):
        """Stop one node (SIGINT, then SIGKILL after `timeout`) and close its log."""
        p, log = self.procs.pop(name)
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        self._reap(p, log, timeout)

    def stop(self):
        for name, (p, log) in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for name, (p, log) in self.procs.items():
            self._reap(p, log)
        # Workers lead process groups of their own: make sure none of this test's outlives it.
        for pid in self.leftover_workers():
            os.kill(pid, signal.SIGKILL)

    def leftover_workers(self):
        """Worker processes still running in this test's ROS domain."""
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode()
                env = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd.endswith("/rosa/lib/rosa/worker") and f"ROS_DOMAIN_ID={self.domain_id}".encode() in env:
                found.append(int(d.name))
        return found


def kill_processes(matches):
    """SIGKILL every process for which `matches(Path("/proc/<pid>"))` is true (one that ends or
    cannot be read meanwhile is skipped): what a test started and a killed parent left behind."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and matches(d):
                os.kill(int(d.name), signal.SIGKILL)
        except OSError:
            pass


def marked(mark: bytes):
    """A `kill_processes` predicate: `mark` is one of the process's environment entries."""
    return lambda d: mark in (d / "environ").read_bytes().split(b"\0")


def stop_supervisor(proc):
    """Stop a `./rosa up` process: Ctrl-C first (its nodes lead sessions of their own, so a SIGKILL
    of the supervisor alone would orphan them), SIGKILL if it does not stop."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def domain_id():
    return fresh_domain_id()


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
def robot():
    with McpRecorder(name="testbot") as server:
        yield server


@pytest.fixture
def peer(domain_id):
    p = Peer(domain_id)
    yield p
    p.close()


@pytest.fixture
def graph(tmp_path, domain_id, llm, robot, request):
    g = Graph(tmp_path, domain_id, llm.url, {"testbot": robot.url})
    yield g
    g.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for name in g.procs:
            print(f"\n----- {name}.log -----\n{g.log(name)[-6000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
