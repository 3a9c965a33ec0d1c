"""The stt node: real whisper (tiny.en, converted by ./rosa setup), real DDS, speech made by espeak-ng.

Audio reaches the node as a user's would: a WAV file (`audio_source: file:…`, in real time or as
fast as whisper keeps up) or AudioData chunks streamed on a topic in real time by the rclpy peer.
"""

import os
import signal
import subprocess
import time
from array import array
from pathlib import Path

import numpy as np
import pytest
from rosa_interfaces.msg import AudioData, KernelEvent, Transcript, Update
from std_msgs.msg import Bool, Empty

from conftest import LATCHED, ROOT, node_binary, stop_supervisor, wait_until
from support.scripted_llm import default_handler
from support.speech import RATE, noise, read_wav, say, silence, timeline, word_errors, words, write_wav

MODEL = ROOT / ".rosa" / "models" / "ggml-tiny.en.bin"
TRANSCRIPT = "/rosa/stt/transcript"

# Commands a user would give the robot (no digits: "two" vs "2" is not an error worth counting).
COMMANDS = [
    "turn your head to the left",
    "look up at the ceiling",
    "nod your head slowly",
    "go to sleep now",
    "wake up and look at me",
    "take a picture of the room",
    "what do you see in front of you",
    "play a happy emotion",
    "turn to the right and stop",
    "move your antennas",
    "describe what you see",
    "reset your head position",
    "look down at the table",
    "shake your head",
    "stop moving",
]
# Word error rate bound for whisper tiny.en on these espeak-ng phrases. Measured here: 0.14 (10 of
# 70 words: "head" heard as "hand", "nod" as "add", "picture" as "big cure"; tiny.en's published WER
# on clean read speech is ~6 %, espeak's synthetic voice is harder). 0.25 leaves room for other CPUs'
# floating point while a broken model, resampler or endpointer (words cut off, wrong rate) lands far
# above it (a wrong mel filterbank or tokenizer gives ~1.0).
WER_BOUND = 0.25


@pytest.fixture(autouse=True)
def _model():
    if not MODEL.is_file():
        pytest.fail(f"{MODEL} is missing: run ./rosa setup")


def start_stt(graph, **params):
    """The stt node with test defaults: forward everything, files as fast as whisper keeps up."""
    params.setdefault("wake_word", "''")
    params.setdefault("file_realtime", "false")
    graph.start("stt", **params)


def wait_ready(graph):
    wait_until(lambda: "stt ready" in graph.log("stt") or not graph.alive("stt"), 30, "the stt node to start")
    assert graph.alive("stt"), graph.log("stt")


def transcripts(peer):
    return peer.received(TRANSCRIPT)


def wait_transcripts(peer, n, timeout):
    return wait_until(lambda: len(transcripts(peer)) >= n and transcripts(peer), timeout,
                      f"{n} transcripts (got {[t.text for t in transcripts(peer)]})")


def stream(peer, topic, x, rate=RATE, chunk_ms=20):
    """Publish int16 mono audio as AudioData chunks at real-time pace."""
    pub = peer.publisher(topic, AudioData)
    n = rate * chunk_ms // 1000
    t0 = time.monotonic()
    for i in range(0, len(x), n):
        c = np.asarray(x[i:i + n], dtype=np.int16)
        delay = t0 + (i + len(c)) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pub.publish(AudioData(sample_rate=rate, channels=1, samples=array("h", c.tobytes())))


def wer(refs, hyps):
    ref = [w for r in refs for w in words(r)]
    hyp = [w for h in hyps for w in words(h)]
    return word_errors(ref, hyp) / len(ref)


def test_spoken_commands_are_transcribed_with_a_bounded_word_error_rate(graph, peer, tmp_path):
    parts = [silence(0.5)]
    for c in COMMANDS:
        parts += [say(c), silence(2.5)]
    wav = timeline(tmp_path / "commands.wav", parts)
    peer.listen(TRANSCRIPT, Transcript)
    start_stt(graph, audio_source=f"file:{wav}")
    got = wait_transcripts(peer, len(COMMANDS), 180)
    time.sleep(1.0)  # nothing more comes
    got = transcripts(peer)
    texts = [t.text for t in got]
    rate = wer(COMMANDS, texts)
    print(f"\nWER of whisper tiny.en on {len(COMMANDS)} espeak-ng commands: {rate:.3f}")
    for ref, hyp in zip(COMMANDS, texts):
        print(f"  {ref!r:40} -> {hyp!r}")
    # One transcript per command, in order, each spanning its own stretch of the file.
    assert len(got) == len(COMMANDS), texts
    assert rate <= WER_BOUND, f"WER {rate:.3f} > {WER_BOUND}: {texts}"
    ends = [(t.start_time.sec + t.start_time.nanosec * 1e-9, t.end_time.sec + t.end_time.nanosec * 1e-9) for t in got]
    assert all(s < e for s, e in ends) and all(ends[i][1] <= ends[i + 1][0] for i in range(len(ends) - 1))
    assert all(t.wake_word is False and t.doa_valid is False and t.header.frame_id == "microphone" for t in got)
    assert "dropped" not in graph.log("stt")


def test_three_phrases_separated_by_silence_give_three_transcripts(graph, peer, tmp_path):
    """In real time, from a 48 kHz stereo file (resampled and down-mixed by the node)."""
    phrases = ["look to the left", "go to sleep now", "describe what you see"]
    mono = timeline(tmp_path / "three.wav", [silence(0.3), say(phrases[0]), silence(2.0), say(phrases[1]),
                                              silence(2.0), say(phrases[2]), silence(2.0)])
    wav = tmp_path / "three-48k-stereo.wav"
    subprocess.run(["sox", str(mono), "-r", "48000", "-c", "2", str(wav)], check=True)
    assert read_wav(wav)[1:] == (48000, 2)
    peer.listen(TRANSCRIPT, Transcript)
    t0 = time.time()
    start_stt(graph, audio_source=f"file:{wav}", file_realtime="true")
    got = wait_transcripts(peer, 3, 60)
    time.sleep(2.0)
    got = transcripts(peer)
    assert len(got) == 3, [t.text for t in got]
    for ref, t in zip(phrases, got):
        assert wer([ref], [t.text]) <= 0.34, (ref, t.text)
        # Real time: stamps are wall-clock times of this run.
        assert t0 < t.start_time.sec + t.start_time.nanosec * 1e-9 < t.end_time.sec + t.end_time.nanosec * 1e-9 < time.time()


def test_wake_word_rules(graph, peer, tmp_path):
    """'hello, turn left' forwards 'turn left'; the window forwards the next utterance; after the
    window nothing is forwarded; 'hello' alone opens the window for the next one."""
    wav = timeline(tmp_path / "wake.wav", [
        silence(0.5), say("hello, turn left"), silence(2.0),
        say("look up"), silence(8.0),           # within the 4 s window; then the window closes
        say("wave your hand"), silence(2.0),     # not forwarded
        say("hello"), silence(2.0),              # wake word alone
        say("turn right"), silence(2.5),         # forwarded
    ])
    peer.listen(TRANSCRIPT, Transcript)
    start_stt(graph, audio_source=f"file:{wav}", wake_word="hello", wake_window_sec=4.0)
    wait_until(lambda: any("right" in words(t.text) for t in transcripts(peer)), 90,
               f"'turn right' (got {[t.text for t in transcripts(peer)]})")
    time.sleep(1.0)
    got = transcripts(peer)
    assert [words(t.text) for t in got] == [["turn", "left"], ["look", "up"], ["turn", "right"]], [t.text for t in got]
    assert all(t.wake_word for t in got)
    log = graph.log("stt")
    ignored = [line for line in log.splitlines() if "not forwarded: no wake word" in line]
    assert len(ignored) == 1 and "wave" in ignored[0].lower(), ignored
    assert "wake word: listening" in log


def test_listening_state_follows_the_wake_window(graph, peer, tmp_path):
    """Listening turns true when the wake word is recognised and false when its window is over
    (the window counts from the end of the utterance, so it shows for the window minus whisper's
    latency)."""
    wav = timeline(tmp_path / "hello.wav", [silence(0.5), say("hello"), silence(1.0)])
    peer.listen("/rosa/stt/listening", Bool, LATCHED)
    peer.listen(TRANSCRIPT, Transcript)
    start_stt(graph, audio_source=f"file:{wav}", file_realtime="true", wake_word="hello", wake_window_sec=5.0)

    def states():
        out = []
        for _, m in peer.received_at("/rosa/stt/listening"):
            if not out or out[-1] != m.data:
                out.append(m.data)
        return out

    try:
        wait_until(lambda: states() == [False, True, False], 30, "listening false, true, false")
    finally:
        print("listening states:", states())
    msgs = peer.received_at("/rosa/stt/listening")
    on = next(t for t, m in msgs if m.data)
    off = next(t for t, m in msgs if t > on and not m.data)
    assert 0.5 < off - on < 5.5, (on, off)
    assert transcripts(peer) == []  # the wake word alone is not a command


def test_nothing_is_transcribed_while_the_robot_speaks(graph, peer):
    """Audio on a topic; /rosa/speaking true during the first phrase, false for the second."""
    peer.listen(TRANSCRIPT, Transcript)
    peer.listen("/rosa/stop_speaking", Empty)
    peer.listen("/rosa/stt/listening", Bool, LATCHED)
    start_stt(graph, audio_source="topic:/test/audio")
    wait_ready(graph)
    peer.publish("/rosa/speaking", Bool, Bool(data=True))
    wait_until(lambda: "the robot speaks" in graph.log("stt"), 10, "the node to hear /rosa/speaking")
    stream(peer, "/test/audio", np.concatenate([silence(0.3), say("wake up and look at me"), silence(2.0)]))
    assert transcripts(peer) == []
    assert peer.received("/rosa/stt/listening")[-1].data is False
    peer.publish("/rosa/speaking", Bool, Bool(data=False))
    wait_until(lambda: "the robot stopped speaking" in graph.log("stt"), 10, "the node to hear /rosa/speaking")
    stream(peer, "/test/audio", np.concatenate([silence(0.5), say("what do you see in front of you"), silence(2.0)]))
    got = wait_transcripts(peer, 1, 20)
    time.sleep(1.0)
    got = transcripts(peer)
    assert len(got) == 1 and wer(["what do you see in front of you"], [got[0].text]) <= 0.4, [t.text for t in got]
    assert peer.received("/rosa/stop_speaking") == []  # barge_in is off by default


def test_barge_in_asks_the_robot_to_stop_and_keeps_what_the_user_said(graph, peer):
    peer.listen(TRANSCRIPT, Transcript)
    peer.listen("/rosa/stop_speaking", Empty)
    start_stt(graph, audio_source="topic:/test/audio", barge_in="true")
    wait_ready(graph)
    peer.publish("/rosa/speaking", Bool, Bool(data=True))
    wait_until(lambda: "the robot speaks" in graph.log("stt"), 10, "the node to hear /rosa/speaking")
    stream(peer, "/test/audio", np.concatenate([silence(0.3), say("stop talking and look at me"), silence(0.3)]))
    peer.wait_for_msg("/rosa/stop_speaking", timeout=5)
    peer.publish("/rosa/speaking", Bool, Bool(data=False))  # the driver stopped
    stream(peer, "/test/audio", silence(2.0))
    got = wait_transcripts(peer, 1, 20)
    assert wer(["stop talking and look at me"], [got[0].text]) <= 0.4, got[0].text
    assert len(peer.received("/rosa/stop_speaking")) == 1


def test_silence_and_noise_give_no_transcript(graph, peer, tmp_path):
    """Silence, white noise, brown noise and mains hum, then one command: only the command."""
    wav = timeline(tmp_path / "noise.wav", [
        silence(3.0), noise(3.0, 0.03, "white"), silence(1.0), noise(3.0, 0.05, "brown", seed=1), silence(1.0),
        noise(3.0, 0.05, "hum"), silence(2.0), say("turn left"), silence(2.5),
    ])
    peer.listen(TRANSCRIPT, Transcript)
    start_stt(graph, audio_source=f"file:{wav}")
    got = wait_transcripts(peer, 1, 60)
    time.sleep(1.0)
    got = transcripts(peer)
    assert [words(t.text) for t in got] == [["turn", "left"]], [t.text for t in got]


def run_stt_expecting_failure(graph, *params, timeout=30):
    args = [str(node_binary("stt")), "--ros-args", "--params-file", str(ROOT / "config" / "rosa.yaml")]
    for p in params:
        args += ["-p", p]
    r = subprocess.run(args, env=graph.env(), capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def test_a_missing_or_corrupt_model_is_a_clear_error_at_start(graph, tmp_path):
    code, out = run_stt_expecting_failure(graph, f"model:={tmp_path / 'nope.bin'}", "audio_source:=none")
    assert code == 78 and "nope.bin does not exist" in out and "./rosa setup" in out, out

    junk = tmp_path / "junk.bin"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    code, out = run_stt_expecting_failure(graph, f"model:={junk}", "audio_source:=none")
    assert code == 78 and "junk.bin is not a usable ggml whisper model" in out and "magic" in out, out

    truncated = tmp_path / "truncated.bin"
    with open(MODEL, "rb") as f:
        truncated.write_bytes(f.read(20_000_000))
    code, out = run_stt_expecting_failure(graph, f"model:={truncated}", "audio_source:=none")
    assert code == 78 and "truncated.bin is not a usable ggml whisper model" in out and "truncated" in out, out
    assert "panicked" not in out


def test_bad_audio_sources_are_clear_errors_and_a_missing_device_is_not(graph, peer, tmp_path):
    code, out = run_stt_expecting_failure(graph, "audio_source:=microphone")
    assert code == 78 and "audio_source `microphone` is not one of" in out, out
    code, out = run_stt_expecting_failure(graph, f"audio_source:=file:{tmp_path / 'none.wav'}")
    assert code == 78 and "cannot read the WAV file" in out and "none.wav" in out, out
    # No such input device: a clear log line; the node stays up and says it is not listening.
    peer.listen("/rosa/stt/listening", Bool, LATCHED)
    start_stt(graph, audio_source="'device:no such microphone'")
    wait_until(lambda: "no audio input" in graph.log("stt"), 30, "the no-device log line")
    assert 'no input device named "no such microphone"' in graph.log("stt")
    peer.wait_for_msg("/rosa/stt/listening", lambda m: m.data is False)
    time.sleep(1.0)
    assert graph.alive("stt")


def test_hello_look_to_the_left_reaches_a_robot_tool(graph, peer, llm, robot, tmp_path):
    """WAV → stt → transcript → kernel (scripted LLM) → worker → the robot's move_head tool."""
    llm.handler = default_handler(worker_tool="move_head", worker_args={"direction": "left", "degrees": 30})
    wav = timeline(tmp_path / "hello.wav", [silence(0.5), say("hello, look to the left"), silence(2.0)])
    graph.start("process_manager")
    graph.start("kernel")
    peer.listen(TRANSCRIPT, Transcript)
    peer.listen("/rosa/events", KernelEvent)
    peer.listen("/rosa/updates", Update)
    wait_until(lambda: "kernel ready" in graph.log("kernel"), 20, "the kernel")
    graph.start("stt", audio_source=f"file:{wav}")  # the config's wake word, real time

    calls = robot.wait_for_calls(1, timeout=40)
    assert calls[0]["tool"] == "move_head" and calls[0]["args"]["direction"] == "left"
    t = peer.wait_for_msg(TRANSCRIPT)
    assert words(t.text) == ["look", "to", "the", "left"] and t.wake_word is True, t.text
    ev = peer.wait_for_msg("/rosa/events", lambda m: m.source == "transcript")
    assert ev.text == f"[User said] {t.text}"
    worker = llm.requests_by("worker")[0]["body"]
    assert worker["messages"][1]["content"].startswith(f"## Your task\nTask: {t.text}\n")
    peer.wait_for_msg("/rosa/updates", lambda m: m.role == "kernel" and m.text.startswith("Worker finished"), timeout=30)


def read(path):
    return Path(path).read_text(errors="replace") if Path(path).exists() else ""


def nodes_marked(mark):
    """Node processes (from this checkout's install) whose environment carries ROSA_TEST_MARK=mark."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv0 = (d / "cmdline").read_bytes().split(b"\0")[0].decode()
                env = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if "/rosa/lib/rosa/" in argv0 and f"ROSA_TEST_MARK={mark}".encode() in env:
                found.append(int(d.name))
    return found


def test_rosa_up_with_an_audio_file(tmp_path, domain_id, llm, robot):
    """`./rosa up --audio-file` runs the graph with the stt node listening to the file."""
    llm.handler = default_handler(worker_tool="wave", worker_args={"times": 1})
    robots = tmp_path / "robots.yaml"
    robots.write_text(f"robots:\n  - name: testbot\n    url: {robot.url}\n    description: test robot\n")
    wav = timeline(tmp_path / "see.wav", [silence(0.5), say("hello, describe what you see"), silence(2.0)])
    log_dir = tmp_path / "logs"
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROSA_TEST_MARK=str(log_dir), ROSA_DATA_DIR=str(tmp_path / "data"))
    up = subprocess.Popen([str(ROOT / "rosa"), "up", "--no-web", "--llm-url", llm.url, "--llm-model", "scripted", "--robots", str(robots),
                           "--log-dir", str(log_dir), "--no-sim", "--audio-file", str(wav)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        calls = robot.wait_for_calls(1, timeout=60)
        assert calls[0]["tool"] == "wave"
        stt_log = read(log_dir / "stt.log")
        assert f"audio_source:=file:{wav}" in stt_log and "transcript published" in stt_log, stt_log
        said = [m["content"] for r in llm.requests_by("kernel") for m in r["body"]["messages"]
                if str(m.get("content") or "").startswith("[User said]")]
        assert said and words(said[0]) == ["user", "said", "describe", "what", "you", "see"], said
        os.killpg(up.pid, signal.SIGINT)
        out, _ = up.communicate(timeout=15)
        assert "rosa: stopped" in out and "[stt]" in out
        assert nodes_marked(log_dir) == []
    finally:
        stop_supervisor(up)
        for pid in nodes_marked(log_dir):
            os.kill(pid, signal.SIGKILL)
