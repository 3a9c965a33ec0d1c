"""The commands a user types: `./rosa up` (supervised graph, flags, respawn, Ctrl-C) and `./rosa say`."""

import os
import signal
import subprocess
import time
from pathlib import Path

from rosa_interfaces.msg import Update

from conftest import ROOT, stop_supervisor, wait_until


def read(path):
    return Path(path).read_text(errors="replace") if Path(path).exists() else ""


def node_pid(log_dir, name):
    """The pid of the running node `name` started by the supervisor (from /proc)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
                env = (d / "environ").read_bytes()
            except OSError:
                continue
            if argv[0].decode().endswith(f"/rosa/lib/rosa/{name}") and str(log_dir).encode() in env:
                return int(d.name)
    return None


def test_up_say_respawn_and_ctrl_c(tmp_path, domain_id, llm, robot, peer):
    robots = tmp_path / "drivers.json"  # the seed's format is accepted by --robots
    robots.write_text('{"mcpServers": {"testbot": {"url": "%s", "description": "test robot"}}}' % robot.url)
    log_dir = tmp_path / "logs"
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROSA_TEST_MARK=str(log_dir), ROSA_DATA_DIR=str(tmp_path / "data"))
    up = subprocess.Popen([str(ROOT / "rosa"), "up", "--no-web", "--llm-url", llm.url, "--llm-model", "scripted",
                           "--robots", str(robots), "--log-dir", str(log_dir), "--no-sim"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        peer.listen("/rosa/updates", Update, publishers=2)
        wait_until(lambda: "kernel ready" in read(log_dir / "kernel.log"), 20, "the kernel to start")
        say = subprocess.run([str(ROOT / "rosa"), "say", "wave at me"], env=env, capture_output=True, text=True, timeout=30)
        assert say.returncode == 0, say.stderr
        assert "published to /rosa/command: wave at me" in say.stdout
        calls = robot.wait_for_calls(1, timeout=20)
        assert calls[0]["tool"] == "wave"
        peer.wait_for_msg("/rosa/updates", lambda m: m.role == "kernel" and m.text.startswith("Worker finished"))
        # The flags reached the nodes: the scripted model and URL were used.
        assert all(r["body"]["model"] == "scripted" for r in llm.snapshot())

        # A node that dies is restarted, and it is logged.
        pid = wait_until(lambda: node_pid(log_dir, "kernel"), 5, "the kernel's pid")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: (p := node_pid(log_dir, "kernel")) and p != pid, 20, "the kernel to be restarted")
        assert "exited with signal 9" in read(log_dir / "kernel.log")

        # Ctrl-C stops everything within a few seconds.
        t0 = time.monotonic()
        os.killpg(up.pid, signal.SIGINT)
        out, _ = up.communicate(timeout=15)
        assert time.monotonic() - t0 < 8
        assert "rosa: stopped" in out
        assert "[kernel]" in out and "[process_manager]" in out
        assert all(node_pid(log_dir, n) is None for n in ("kernel", "process_manager", "stt"))
    finally:
        stop_supervisor(up)
        for name in ("kernel", "process_manager", "stt"):
            while (pid := node_pid(log_dir, name)) is not None:
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)


def test_say_without_a_kernel_fails_clearly(domain_id):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    r = subprocess.run([str(ROOT / "rosa"), "say", "hello"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "nobody subscribes to /rosa/command" in r.stderr


def test_up_starts_the_bridge_for_ros_robots_and_keeps_a_sourced_overlay(tmp_path, domain_id, llm):
    """`./rosa up --robots FILE` starts the mcp_bridge when FILE has a robot with a `ros:` section,
    and the nodes it starts still see an overlay the user sourced before (a type only there)."""
    from support.reachy import McpClient
    overlay = tmp_path / "overlay"
    (overlay / "share" / "my_robot_msgs" / "msg").mkdir(parents=True)
    (overlay / "share" / "my_robot_msgs" / "msg" / "Status.msg").write_text("float32 charge\nstring mode\n")
    robots = tmp_path / "robots.yaml"
    robots.write_text("robots:\n  - name: turtle\n    description: a ROS robot\n    ros:\n      namespace: /r1\n")
    log_dir = tmp_path / "logs"
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROSA_TEST_MARK=str(log_dir), ROSA_DATA_DIR=str(tmp_path / "data"),
               AMENT_PREFIX_PATH=f"{overlay}:{os.environ.get('AMENT_PREFIX_PATH', '')}")
    shown = subprocess.run([str(ROOT / "rosa"), "env"], env=env, capture_output=True, text=True, timeout=30).stdout
    assert f"export AMENT_PREFIX_PATH='{overlay}:" in shown, shown
    up = subprocess.Popen([str(ROOT / "rosa"), "up", "--llm-url", llm.url, "--llm-model", "scripted",
                           "--robots", str(robots), "--log-dir", str(log_dir), "--no-sim", "--no-stt"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_until(lambda: "mcp_bridge ready" in read(log_dir / "mcp_bridge.log"), 30, "the bridge to start")
        with McpClient("http://127.0.0.1:5002/turtle/mcp") as c:
            err, text = c.call("describe_type", {"type": "my_robot_msgs/msg/Status"})
            assert not err and "float32 charge" in text, text
    finally:
        stop_supervisor(up)
        for name in ("kernel", "process_manager", "mcp_bridge"):
            while (pid := node_pid(log_dir, name)) is not None:
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
