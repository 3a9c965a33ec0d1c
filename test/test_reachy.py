"""The reachy_driver node against the real Reachy Mini daemon (headless mockup simulation).

Real daemon (reachy-mini 1.12.0), real node binary, real DDS (loopback) with an rclpy peer, real MCP
over HTTP (the `mcp` package's client). Each motion is checked by reading the daemon's own state back.
"""

import math
import os
import time
import wave
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty, String
from tf2_msgs.msg import TFMessage

from conftest import LATCHED, Graph, Peer, fresh_domain_id, kill_processes, marked, wait_until
from support.reachy import McpClient, ReachyDaemon, free_port, write_emotions
from support.scripted_llm import ScriptedLLM, default_handler

DEG = math.pi / 180
POS_TOL = 0.002  # m
ANG_TOL = 2 * DEG

EMOTION_MOVES = {
    "cheerful1": {"yaw_deg": 20, "antennas": [0.5, -0.5], "seconds": 0.8},
    "cheerful2": {"yaw_deg": 20, "antennas": [0.5, -0.5], "seconds": 0.8},
    "sad1": {"yaw_deg": -15, "seconds": 0.8},
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    work = tmp_path_factory.mktemp("reachy")
    d = ReachyDaemon(work)
    write_emotions(d.hf_home, EMOTION_MOVES)
    d.start()
    yield d
    d.stop()


def neutral(d):
    d.post("/api/move/goto", {"head_pose": {}, "antennas": [0, 0], "body_yaw": 0, "duration": 0.3})
    wait_until(lambda: not d.get("/api/move/running"), 10, "the daemon's moves to end")


class Driver:
    """reachy_driver (and, for the end-to-end test, the core graph) in this test's ROS domain."""

    def __init__(self, tmp_path, daemon_url, llm_url="http://127.0.0.1:9/v1", **params):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.domain_id = fresh_domain_id()
        self.graph = Graph(tmp_path, self.domain_id, llm_url, {"reachy-mini": self.url})
        self.speech_dir = tmp_path / "speech"
        self.data_dir = tmp_path / "data"
        self.params = {"daemon_url": daemon_url, "mcp_port": self.port, "speech.output": "files",
                       "speech.output_dir": str(self.speech_dir), "data_dir": str(self.data_dir), **params}
        self.graph.start("reachy_driver", **self.params)
        self.mcp = McpClient(self.url).start(timeout=30)

    def call(self, tool, args=None, timeout=40.0):
        return self.mcp.call(tool, args, timeout)

    def close(self):
        self.mcp.close()
        self.graph.stop()


@pytest.fixture
def driver(tmp_path, daemon, request):
    neutral(daemon)
    d = Driver(tmp_path, daemon.url)
    yield d
    d.close()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(f"\n----- reachy_driver.log -----\n{d.graph.log('reachy_driver')[-6000:]}")


@pytest.fixture
def ros(driver):
    p = Peer(driver.domain_id)
    yield p
    p.close()


def close_to(a, b, tol):
    return abs(a - b) <= tol


# -------------------------------------------------------------------------------------------------
# MCP tools, each checked against the daemon's state
# -------------------------------------------------------------------------------------------------

def test_tools_are_listed_with_documented_schemas(driver):
    tools = {t.name: t for t in driver.mcp.tools()}
    assert set(tools) >= {"goto_target", "move_head_left", "move_head_right", "reset_head", "stop_move", "wake_up",
                          "go_to_sleep", "list_emotions", "play_emotion", "take_picture", "describe_image", "speak",
                          "move_to_audio"}
    props = tools["goto_target"].inputSchema["properties"]
    assert {"x", "y", "z", "roll", "pitch", "yaw", "antennas", "body_yaw", "duration", "interpolation",
            "position_unit", "angle_unit", "wait"} <= set(props)
    text = str(tools["goto_target"].inputSchema)
    for fact in ("mm", "±35°", "±160°", "0.2…30 s", "linear", "cartoon"):
        assert fact in text, fact
    assert "forcefully_interrupt" in tools["speak"].inputSchema["properties"]
    assert "multiple" in tools["move_head_left"].inputSchema["properties"]


def test_goto_target_moves_the_head_in_mm_and_degrees(driver, daemon):
    err, text = driver.call("goto_target", {"x": 10, "z": 8, "roll": 10, "yaw": 25, "antennas": [30, -30],
                                            "duration": 0.5, "interpolation": "ease"})
    assert not err, text
    assert "done" in text and "limited" not in text
    s = daemon.state()
    assert close_to(s["x"], 0.010, POS_TOL) and close_to(s["z"], 0.008, POS_TOL), s
    assert close_to(s["roll"], 10 * DEG, ANG_TOL) and close_to(s["yaw"], 25 * DEG, ANG_TOL), s
    assert close_to(s["antennas"][0], 30 * DEG, ANG_TOL) and close_to(s["antennas"][1], -30 * DEG, ANG_TOL), s

    # Metres and radians; omitted head values keep their present value (x, roll stay).
    err, text = driver.call("goto_target", {"y": -0.01, "pitch": -0.2, "position_unit": "m", "angle_unit": "rad",
                                            "duration": 0.4})
    assert not err, text
    s = daemon.state()
    assert close_to(s["y"], -0.010, POS_TOL) and close_to(s["pitch"], -0.2, ANG_TOL), s
    assert close_to(s["x"], 0.010, POS_TOL) and close_to(s["yaw"], 25 * DEG, ANG_TOL), s


def test_out_of_range_requests_are_clamped_to_the_limits(driver, daemon):
    err, text = driver.call("goto_target", {"x": 500, "z": -400, "pitch": 90, "antennas": [600, -600],
                                            "body_yaw": 400, "duration": 0.01})
    assert not err, text
    assert "limited" in text and "x 500.0 mm clamped to 30.0 mm" in text and "duration" in text, text
    s = daemon.state()
    assert s["x"] <= 0.030 + POS_TOL and s["z"] >= -0.030 - POS_TOL, s
    assert abs(s["pitch"]) <= 35 * DEG + ANG_TOL, s
    assert all(abs(a) <= 3.05 + 0.01 for a in s["antennas"]), s
    assert abs(s["body_yaw"]) <= 160 * DEG + ANG_TOL, s
    # The head may not turn further than 55° from the body.
    err, text = driver.call("goto_target", {"yaw": -170, "body_yaw": 0, "duration": 0.3})
    assert not err and "yaw -170.0° clamped to -55.0°" in text, text
    assert close_to(daemon.state()["yaw"], -55 * DEG, ANG_TOL)
    # Arguments that are not numbers never reach the robot.
    before = daemon.state()
    err, text = driver.call("goto_target", {"x": "far", "duration": 0.3})
    assert err and "x" in text, text
    err, text = driver.call("goto_target", {"duration": 1})
    assert err and "at least one of" in text
    assert close_to(daemon.state()["yaw"], before["yaw"], ANG_TOL)


def test_move_head_left_right_and_reset(driver, daemon):
    err, text = driver.call("move_head_left", {})
    assert not err, text
    assert close_to(daemon.state()["yaw"], 15 * DEG, ANG_TOL)
    err, text = driver.call("move_head_right", {"multiple": 3})
    assert not err, text
    assert close_to(daemon.state()["yaw"], -30 * DEG, ANG_TOL)
    # multiple is capped at 4 steps (60°), and the result at the 55° limit.
    err, text = driver.call("move_head_left", {"multiple": 100})
    assert not err, text
    assert close_to(daemon.state()["yaw"], 30 * DEG, ANG_TOL)
    err, text = driver.call("move_head_left", {"multiple": 4})
    assert not err and "clamped to 55.0°" in text, text
    assert close_to(daemon.state()["yaw"], 55 * DEG, ANG_TOL)
    err, text = driver.call("reset_head")
    assert not err, text
    s = daemon.state()
    assert all(close_to(s[k], 0, ANG_TOL) for k in ("roll", "pitch", "yaw", "body_yaw")), s
    assert all(close_to(a, 0, ANG_TOL) for a in s["antennas"]), s


def test_goto_without_waiting_returns_the_move_id_and_stop_move_stops_it(driver, daemon):
    t = time.monotonic()
    err, text = driver.call("goto_target", {"yaw": 50, "duration": 4, "interpolation": "linear", "wait": False})
    assert not err and "started" in text, text
    assert time.monotonic() - t < 1.0
    move_id = text.split("move ")[1].split()[0].rstrip(",")
    assert any(m["uuid"] == move_id for m in daemon.get("/api/move/running"))
    time.sleep(1.2)
    err, text = driver.call("stop_move")
    assert not err and "stopped 1 move" in text, text
    stopped_at = daemon.state()["yaw"]
    time.sleep(1.0)
    s = daemon.state()
    assert daemon.get("/api/move/running") == []
    assert 5 * DEG < s["yaw"] < 40 * DEG, s  # partway: the move was cut, not finished
    assert close_to(s["yaw"], stopped_at, ANG_TOL), (stopped_at, s)


def test_sleep_and_wake_up(driver, daemon):
    err, text = driver.call("go_to_sleep", timeout=30)
    assert not err, text
    s = daemon.state()
    assert abs(s["antennas"][0]) > 2.5 and abs(s["antennas"][1]) > 2.5, s  # folded
    err, text = driver.call("wake_up", timeout=30)
    assert not err, text
    s = daemon.state()
    assert abs(s["antennas"][0]) < 1.0 and abs(s["pitch"]) < 10 * DEG, s


def test_emotions_play_from_the_hf_cache(driver, daemon):
    err, text = driver.call("list_emotions")
    assert not err, text
    assert "cheerful (2 variants)" in text and "sad" in text, text
    err, text = driver.call("play_emotion", {"emotion": "cheerful"})
    assert not err and ("cheerful1" in text or "cheerful2" in text), text
    s = daemon.state()
    assert close_to(s["yaw"], 20 * DEG, 3 * DEG), s
    assert close_to(s["antennas"][0], 0.5, 0.05), s
    err, text = driver.call("play_emotion", {"emotion": "sad1"})
    assert not err, text
    assert close_to(daemon.state()["yaw"], -15 * DEG, 3 * DEG)
    err, text = driver.call("play_emotion", {"emotion": "furious"})
    assert err and "unknown emotion" in text and "cheerful" in text and "sad" in text, text


def test_take_picture_from_an_image_topic_and_describe_it(tmp_path, daemon):
    """A camera topic feeds take_picture; the vision model (scripted, OpenAI-compatible) gets the JPEG."""
    from support.scripted_llm import Reply

    neutral(daemon)
    with ScriptedLLM(lambda req: Reply("A red square.")) as vision:
        d = Driver(tmp_path, daemon.url, **{"camera.source": "/test_camera/image_raw",
                                            "vision.urls": f"['{vision.url}']", "vision.key_envs": "['']",
                                            "vision.models": "['scripted-vision']"})
        peer = Peer(d.domain_id)
        try:
            err, text = d.call("take_picture")
            assert err and "no image received on /test_camera/image_raw" in text, text
            pub = peer.publisher("/test_camera/image_raw", Image)
            w, h = 64, 48
            img = Image(width=w, height=h, encoding="rgb8", step=w * 3, data=bytes([200, 30, 30]) * (w * h))
            for _ in range(20):
                pub.publish(img)
                time.sleep(0.05)
            err, text = d.call("take_picture", {"question": "What do you see?"})
            assert not err, text
            path = text.split("saved to ")[1].split()[0].rstrip(";")
            data = open(path, "rb").read()
            assert data[:2] == b"\xff\xd8" and len(data) > 100
            assert str(d.data_dir) in path
            assert "A red square." in text, text
            body = vision.snapshot()[-1]["body"]
            content = body["messages"][0]["content"]
            assert body["model"] == "scripted-vision"
            assert content[0]["text"] == "What do you see?"
            assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
            # describe_image on the saved file, the same way.
            err, text = d.call("describe_image", {"image": path})
            assert not err and text == "A red square.", text
        finally:
            peer.close()
            d.close()


def test_take_picture_without_a_camera_and_move_to_audio_without_a_microphone(driver):
    err, text = driver.call("take_picture")
    assert err and "no camera is configured" in text, text
    err, text = driver.call("move_to_audio")
    assert err and "no direction of arrival" in text, text
    err, text = driver.call("describe_image", {"image": "/no/such/picture.jpg"})
    assert err and "/no/such/picture.jpg" in text, text


# -------------------------------------------------------------------------------------------------
# ROS side
# -------------------------------------------------------------------------------------------------

def test_joint_states_tf_description_and_diagnostics_follow_the_daemon(driver, daemon, ros):
    ros.listen("/joint_states", JointState).listen("/tf", TFMessage).listen("/diagnostics", DiagnosticArray)
    ros.listen("/robot_description", String, LATCHED).listen("/tf_static", TFMessage, LATCHED)
    desc = ros.wait_for_msg("/robot_description", timeout=20)
    assert desc.data.lstrip().startswith("<?xml") and "yaw_body" in desc.data
    ros.wait_for_msg("/joint_states", timeout=20)
    time.sleep(2.0)
    stamps = [t for t, _ in ros.received_at("/joint_states")]
    recent = [t for t in stamps if t > stamps[-1] - 1.5]
    rate = (len(recent) - 1) / (recent[-1] - recent[0])
    assert rate >= 20, f"/joint_states at {rate:.1f} Hz"
    js = ros.received("/joint_states")[-1]
    assert list(js.name[:7]) == ["yaw_body"] + [f"stewart_{i}" for i in range(1, 7)]
    assert {"right_antenna", "left_antenna"} <= set(js.name)

    err, text = driver.call("goto_target", {"body_yaw": 30, "antennas": [20, -40], "yaw": 30, "duration": 0.4})
    assert not err, text
    s = daemon.state()

    def follows(m):
        p = dict(zip(m.name, m.position))
        return (close_to(p["yaw_body"], s["body_yaw"], 0.02) and close_to(p["right_antenna"], s["antennas"][0], 0.02)
                and close_to(p["left_antenna"], s["antennas"][1], 0.02))
    ros.wait_for_msg("/joint_states", follows, timeout=5)

    # /tf carries the moving links; the head frame ends where the daemon says (yaw 30°).
    tf = ros.wait_for_msg("/tf", lambda m: any(t.child_frame_id == "xl_330" for t in m.transforms), timeout=5)
    frames = {t.child_frame_id for t in tf.transforms}
    assert {"body_down_3dprint", "xl_330", "dc15_a01_horn_dummy_7"} <= frames, frames
    static = ros.wait_for_msg("/tf_static", timeout=5)
    assert {"head", "camera"} <= {t.child_frame_id for t in static.transforms}

    diag = ros.wait_for_msg("/diagnostics", lambda m: m.status and m.status[0].level == DiagnosticStatus.OK, timeout=5)
    values = {kv.key: kv.value for kv in diag.status[0].values}
    assert values["daemon_url"] == daemon.url and values["simulation"] == "mockup-sim", values


def test_speak_produces_audio_and_toggles_speaking(driver, ros):
    ros.listen("/rosa/speaking", Bool, LATCHED)
    ros.wait_for_msg("/rosa/speaking", lambda m: m.data is False, timeout=10)
    sentence = "Hello, I am Reachy Mini, and I am glad to meet you today."
    t0 = time.monotonic()
    err, text = driver.call("speak", {"text": sentence})
    assert not err, text
    wait_until(lambda: any(m.data for m in ros.received("/rosa/speaking")), 10, "/rosa/speaking true")
    on = next(t for t, m in ros.received_at("/rosa/speaking") if m.data)
    wait_until(lambda: [m.data for m in ros.received("/rosa/speaking")][-1] is False, 20, "/rosa/speaking false")
    off = [t for t, m in ros.received_at("/rosa/speaking")][-1]
    wavs = sorted(driver.speech_dir.glob("*.wav"))
    assert len(wavs) == 1
    with wave.open(str(wavs[0])) as w:
        seconds = w.getnframes() / w.getframerate()
    words = len(sentence.split())
    # espeak-ng at 170 words per minute: ~0.35 s a word, give or take the pauses.
    assert 0.2 * words < seconds < 0.8 * words, seconds
    assert close_to(off - on, seconds, 0.6), (off - on, seconds)
    assert on - t0 < 5


def test_stop_speaking_interrupts_and_drains_the_queue(driver, ros):
    ros.listen("/rosa/speaking", Bool, LATCHED)
    long_text = " ".join(["This is a long sentence that keeps the robot talking for a while."] * 4)
    assert not driver.call("speak", {"text": long_text})[0]
    assert not driver.call("speak", {"text": "This should never be said."})[0]
    wait_until(lambda: any(m.data for m in ros.received("/rosa/speaking")), 10, "/rosa/speaking true")
    time.sleep(0.5)
    ros.publish("/rosa/stop_speaking", Empty, Empty())
    t = time.monotonic()
    wait_until(lambda: [m.data for m in ros.received("/rosa/speaking")][-1] is False, 5, "/rosa/speaking false")
    assert time.monotonic() - t < 1.5
    time.sleep(1.5)
    assert len(list(driver.speech_dir.glob("*.wav"))) == 1, "the queued utterance was dropped"
    assert [m.data for m in ros.received("/rosa/speaking")][-1] is False
    # forcefully_interrupt does the same from the tool.
    assert not driver.call("speak", {"text": long_text})[0]
    wait_until(lambda: [m.data for m in ros.received("/rosa/speaking")][-1] is True, 10, "speaking again")
    err, text = driver.call("speak", {"text": "Stop.", "forcefully_interrupt": True})
    assert not err, text
    wait_until(lambda: len(list(driver.speech_dir.glob("*.wav"))) == 3, 10, "the interrupting utterance")
    wait_until(lambda: [m.data for m in ros.received("/rosa/speaking")][-1] is False, 10, "/rosa/speaking false")


def test_daemon_restart_gives_clear_errors_then_recovers(tmp_path, request):
    d = ReachyDaemon(tmp_path / "own")
    d.start()
    drv = Driver(tmp_path, d.url)
    peer = Peer(drv.domain_id)
    try:
        peer.listen("/joint_states", JointState).listen("/diagnostics", DiagnosticArray)
        peer.wait_for_msg("/joint_states", timeout=20)
        assert not drv.call("goto_target", {"yaw": 10, "duration": 0.3})[0]

        d.kill()
        peer.wait_for_msg("/diagnostics", lambda m: m.status[0].level == DiagnosticStatus.ERROR, timeout=10)
        t = time.monotonic()
        err, text = drv.call("goto_target", {"yaw": 20, "duration": 0.3})
        assert err and "not reachable" in text and d.url.replace("127.0.0.1", "") in text.replace("127.0.0.1", ""), text
        assert time.monotonic() - t < 2.0, "tools fail fast while the daemon is down"
        err, text = drv.call("list_emotions")
        assert err and "not reachable" in text

        n_before = len(peer.received("/joint_states"))
        d.start()
        wait_until(lambda: not drv.call("goto_target", {"yaw": 20, "duration": 0.3})[0], 30, "the driver to recover")
        assert close_to(d.state()["yaw"], 20 * DEG, ANG_TOL)
        wait_until(lambda: len(peer.received("/joint_states")) > n_before + 20, 10, "/joint_states to resume")
        peer.wait_for_msg("/diagnostics", lambda m: m.status[0].level == DiagnosticStatus.OK, timeout=10)
        assert drv.graph.alive("reachy_driver")
    finally:
        peer.close()
        drv.close()
        d.stop()
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(f"\n----- reachy_driver.log -----\n{drv.graph.log('reachy_driver')[-6000:]}")


# -------------------------------------------------------------------------------------------------
# End to end: a text command → kernel → worker → goto_target on the real driver → the daemon moves
# -------------------------------------------------------------------------------------------------

def test_text_command_moves_the_real_robot(tmp_path, daemon):
    from rosa_interfaces.msg import WorkerCallback

    neutral(daemon)
    with ScriptedLLM(default_handler(worker_tool="goto_target", worker_args={"yaw": 25, "pitch": -10, "duration": 0.5},
                                     robots=["reachy-mini"])) as llm:
        d = Driver(tmp_path, daemon.url, llm_url=llm.url)
        peer = Peer(d.domain_id)
        try:
            d.graph.start("process_manager")
            d.graph.start("kernel")
            peer.listen("/rosa/worker_callback", WorkerCallback, publishers=1)
            peer.publisher("/rosa/command", String)
            peer.publish("/rosa/command", String, String(data="look up and to the left"))
            cb = peer.wait_for_msg("/rosa/worker_callback", lambda m: m.final, timeout=40)
            assert cb.done, cb.message
            assert "goto_target: done" in cb.message, cb.message
            s = daemon.state()
            assert close_to(s["yaw"], 25 * DEG, ANG_TOL) and close_to(s["pitch"], -10 * DEG, ANG_TOL), s
            worker_req = llm.requests_by("worker")[0]["body"]
            assert "goto_target" in {t["function"]["name"] for t in worker_req["tools"]}
        finally:
            peer.close()
            d.close()


# -------------------------------------------------------------------------------------------------
# ./rosa up: the simulated daemon first, then the driver; Ctrl-C stops both
# -------------------------------------------------------------------------------------------------

def test_rosa_up_runs_the_simulated_robot(tmp_path):
    import signal
    import subprocess

    from conftest import ROOT

    daemon_port, mcp_port = free_port(), free_port()
    log_dir = tmp_path / "logs"
    env = dict(os.environ, ROS_DOMAIN_ID=str(fresh_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", ROSA_TEST_MARK=str(log_dir), ROSA_DATA_DIR=str(tmp_path / "data"))
    up = subprocess.Popen([str(ROOT / "rosa"), "up", "--no-web", "--llm-url", "http://127.0.0.1:9/v1", "--log-dir", str(log_dir),
                           "--daemon-port", str(daemon_port), "--mcp-port", str(mcp_port)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sim = ReachyDaemon(tmp_path, port=daemon_port)  # to read the daemon's state only
    try:
        def log(name):
            p = log_dir / f"{name}.log"
            return p.read_text(errors="replace") if p.exists() else ""
        wait_until(lambda: "reachy_driver ready" in log("reachy_driver"), 90, "the driver to start")
        assert "--mockup-sim" in log("reachy_daemon") and f"mcp=http://127.0.0.1:{mcp_port}/mcp" in log("reachy_driver")
        with McpClient(f"http://127.0.0.1:{mcp_port}/mcp") as mcp:
            err, text = mcp.call("goto_target", {"yaw": -20, "duration": 0.3})
            assert not err, text
        assert close_to(sim.state()["yaw"], -20 * DEG, ANG_TOL)
        os.killpg(up.pid, signal.SIGINT)
        out, _ = up.communicate(timeout=20)
        assert "rosa: stopped" in out and "[reachy_daemon]" in out and "[reachy_driver]" in out
        with pytest.raises(OSError):
            sim.get("/api/daemon/status", timeout=1)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        # Whatever the supervisor started and left (only if it was killed): this test's mark is in its environment.
        mark = f"ROSA_TEST_MARK={log_dir}".encode()
        kill_processes(marked(mark))
