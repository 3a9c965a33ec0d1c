"""Bags: the bag_recorder node and ./rosa bag (rosa_bag) against independent readers and writers.

A real session (kernel, process manager, workers, the scripted LLM and the MCP probe robot) is
recorded, then read with `rosbags` (AnyReader: metadata, type hashes, CDR) and with `mcap` +
`mcap-ros2-support` (the summary's statistics, channel metadata, ros2msg schemas). Recovery after
SIGTERM and SIGKILL, play timing, replaying a session into a fresh graph, and a bag written by
`rosbags` played back by rosa.
"""

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from rosa_interfaces.msg import AudioData, KernelEvent, ProcessTable, Transcript, Update, WorkerCallback
from std_msgs.msg import String

from conftest import LATCHED, RECENT, RELIABLE, Graph, Peer, fresh_domain_id, node_binary, wait_until
from support.scripted_llm import worker_task

rosbags_highlevel = pytest.importorskip("rosbags.highlevel", reason="rosbags (installed by ./rosa setup)")
from mcap.reader import make_reader  # noqa: E402
from mcap_ros2.decoder import DecoderFactory  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

SESSION_TOPICS = ["/rosa/command", "/rosa/stt/transcript", "/rosa/updates", "/rosa/events",
                  "/rosa/worker_callback", "/rosa/processes", "/robot_description"]


def start_recorder(graph, out, **params):
    params.setdefault("flush_period_sec", 0.2)
    params.setdefault("discovery_period_sec", 0.05)
    return graph.start("bag_recorder", output=json.dumps(str(out)), **params)


def recorder_subscribed(peer, topics, timeout=20):
    """Until the recorder's subscriptions to `topics` are in the graph."""
    def ok():
        for t in topics:
            infos = peer.node.get_subscriptions_info_by_topic(t)
            if not any(i.node_name == "bag_recorder" for i in infos):
                return False
        return True
    wait_until(ok, timeout, f"the recorder's subscriptions to {topics}")


def stop(proc, sig=signal.SIGINT, timeout=10):
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=timeout)
    return time.monotonic() - t0


def rosa_bag(*args, env=None, timeout=60):
    return subprocess.run([str(node_binary("rosa_bag")), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def mcap_file(bag):
    files = sorted(Path(bag).glob("*.mcap"))
    assert len(files) == 1, files
    return files[0]


def metadata(bag):
    return yaml.safe_load((Path(bag) / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


def typestore_with_rosa():
    """rosbags' Jazzy typestore (rosa's own types come from the bag's ros2msg schemas)."""
    return get_typestore(Stores.ROS2_JAZZY)


def read_all_rosbags(bag):
    """{topic: [decoded message, …]} through rosbags' AnyReader."""
    out = {}
    with rosbags_highlevel.AnyReader([Path(bag)], default_typestore=typestore_with_rosa()) as reader:
        for conn, _t, raw in reader.messages():
            out.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    return out


def session(graph, peer, out, commands, transcripts=()):
    """The core graph with the recorder; `commands` typed and `transcripts` said; until every
    worker has reported. Returns the peer's view of what was published."""
    latched = peer.node.create_publisher(String, "/robot_description", LATCHED)
    latched.publish(String(data="<robot name='probe'/>"))
    graph.start("process_manager")
    graph.start("kernel")
    for topic, t, qos in (("/rosa/worker_callback", WorkerCallback, None), ("/rosa/updates", Update, None),
                          ("/rosa/events", KernelEvent, None), ("/rosa/processes", ProcessTable, RECENT),
                          ("/rosa/command", String, RELIABLE), ("/rosa/stt/transcript", Transcript, RELIABLE)):
        peer.listen(topic, t, qos)
    wait_until(lambda: peer.node.count_publishers("/rosa/processes") >= 1, 20, "the process manager")
    # The recorder joins after /rosa/processes and /robot_description were published (latched).
    rec = start_recorder(graph, out)
    peer.publisher("/rosa/command", String, subscribers=2)  # the kernel and the recorder
    tr_pub = peer.publisher("/rosa/stt/transcript", Transcript, subscribers=2)
    recorder_subscribed(peer, ["/rosa/command", "/rosa/stt/transcript", "/rosa/updates", "/rosa/events",
                               "/rosa/worker_callback", "/rosa/processes", "/robot_description"])
    time.sleep(1.0)  # in the graph is not yet matched
    n = 0
    for c in commands:
        peer.publish("/rosa/command", String, String(data=c))
        n += 1
        wait_until(lambda: sum(m.final for m in peer.received("/rosa/worker_callback")) >= n, 40, f"worker {n}'s report")
    for text in transcripts:
        tr_pub.publish(Transcript(text=text, wake_word=True))
        n += 1
        wait_until(lambda: sum(m.final for m in peer.received("/rosa/worker_callback")) >= n, 40, f"worker {n}'s report")
    # The kernel's last update and the table's last change come after the last callback.
    wait_until(lambda: len([u for u in peer.received("/rosa/updates") if u.role == "kernel" and u.text.startswith("Worker finished")]) >= n,
               20, "the kernel's last update")
    time.sleep(1.0)
    return rec


def test_a_recorded_session_is_read_back_exactly_by_rosbags_and_mcap(graph, peer, llm, robot, tmp_path):
    out = tmp_path / "session"
    rec = session(graph, peer, out, ["wave at me", "wave again"], ["look left"])
    took = stop(rec, signal.SIGINT)
    assert rec.returncode == 0, graph.log("bag_recorder")
    assert took < 2.0, f"finalising took {took:.2f} s"

    meta = metadata(out)
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap"
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]}
    for t in meta["topics_with_message_count"]:
        assert t["topic_metadata"]["serialization_format"] == "cdr"
        assert t["topic_metadata"]["type_description_hash"].startswith("RIHS01_"), t
        assert t["topic_metadata"]["offered_qos_profiles"], t
    assert meta["message_count"] == sum(counts.values())
    assert meta["files"][0]["message_count"] == meta["message_count"]

    # What the peer received is what the bag holds: none lost, none duplicated.
    published = {t: peer.received(t) for t in SESSION_TOPICS if t != "/robot_description"}
    for t, msgs in published.items():
        assert counts.get(t) == len(msgs), (t, counts.get(t), len(msgs))
    assert counts["/robot_description"] == 1

    # mcap: the summary's statistics agree; channels and schemas are rosbag2's.
    with open(mcap_file(out), "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        header = reader.get_header()
        summary = reader.get_summary()
        assert header.profile == "ros2"
        stats = summary.statistics
        by_topic = {summary.channels[c].topic: n for c, n in stats.channel_message_counts.items()}
        assert by_topic == {t: n for t, n in counts.items() if n}, (by_topic, counts)
        assert stats.message_count == meta["message_count"]
        assert summary.chunk_indexes, "chunked, with chunk indexes"
        for ch in summary.channels.values():
            assert ch.message_encoding == "cdr"
            schema = summary.schemas[ch.schema_id]
            assert schema.encoding == "ros2msg"
        processes = next(ch for ch in summary.channels.values() if ch.topic == "/rosa/processes")
        qos = yaml.safe_load(processes.metadata["offered_qos_profiles"])
        assert qos[0]["durability"] == "transient_local" and qos[0]["reliability"] == "reliable"
        assert summary.schemas[processes.schema_id].name == "rosa_interfaces/msg/ProcessTable"
        assert "MSG: rosa_interfaces/ProcessInfo" in summary.schemas[processes.schema_id].data.decode()
        decoded = {}
        for _schema, channel, message, ros_msg in reader.iter_decoded_messages():
            assert message.log_time >= message.publish_time > 0
            decoded.setdefault(channel.topic, []).append(ros_msg)
    assert [m.data for m in decoded["/rosa/command"]] == ["wave at me", "wave again"]
    assert [m.text for m in decoded["/rosa/updates"]] == [m.text for m in published["/rosa/updates"]]

    # rosbags (metadata.yaml, type hashes, its own CDR decoder): every value as published.
    msgs = read_all_rosbags(out)
    assert [m.data for m in msgs["/rosa/command"]] == ["wave at me", "wave again"]
    assert [m.text for m in msgs["/rosa/stt/transcript"]] == ["look left"]
    assert msgs["/robot_description"][0].data == "<robot name='probe'/>"
    for a, b in zip(msgs["/rosa/events"], published["/rosa/events"]):
        assert (a.seq, a.source, a.text) == (b.seq, b.source, b.text)
    for a, b in zip(msgs["/rosa/worker_callback"], published["/rosa/worker_callback"]):
        assert (a.worker_id, a.message, a.done, a.final) == (b.worker_id, b.message, b.done, b.final)
    for a, b in zip(msgs["/rosa/processes"], published["/rosa/processes"]):
        assert [(p.worker_id, p.state) for p in a.processes] == [(p.worker_id, p.state) for p in b.processes]
    # The first table was published before the recorder started: transient-local got it.
    assert len(msgs["/rosa/processes"]) == len(published["/rosa/processes"])

    info = rosa_bag("info", out)
    assert info.returncode == 0, info.stderr
    assert f"Messages:          {meta['message_count']}" in info.stdout
    assert "Topic: /rosa/processes | Type: rosa_interfaces/msg/ProcessTable | Count: " in info.stdout


def test_a_1mb_audio_message_round_trips_byte_exact(graph, peer, tmp_path):
    out = tmp_path / "audio"
    pub = peer.node.create_publisher(AudioData, "/rosa/audio", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    rec = start_recorder(graph, out, audio=True, queue_bytes=8 << 20)
    wait_until(lambda: pub.get_subscription_count() >= 1, 20, "the recorder's subscription to /rosa/audio")
    samples = [((i * 7919) % 65536) - 32768 for i in range(524_288)]  # 1 MiB of int16
    msg = AudioData(sample_rate=16000, channels=1, samples=samples)
    msg.header.frame_id = "mic"
    pub.publish(msg)
    time.sleep(1.0)
    stop(rec)
    with open(mcap_file(out), "rb") as f:
        recorded = [m for _s, _c, m in make_reader(f).iter_messages(topics=["/rosa/audio"])]
    assert len(recorded) == 1
    wire = serialize_message(msg)
    assert len(wire) > 1_048_576
    # Byte for byte as it came over the wire, except the two alignment bytes before `samples`'
    # length (wire offsets 26-27, after the 4-byte encapsulation header): the publishing side may
    # leave them uninitialised, where serialize_message writes zeros.
    got = recorded[0].data
    assert len(got) == len(wire) and got[:26] == wire[:26] and got[28:] == wire[28:]
    back = read_all_rosbags(out)["/rosa/audio"][0]
    assert list(back.samples) == samples and back.header.frame_id == "mic"


def test_sigterm_finishes_the_bag_and_sigkill_is_repaired(graph, peer, tmp_path):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # A topic of its own each time: a killed recorder stays matched until its lease ends.
        topic = f"/rosa/probe_{sig.name.lower()}"
        pub = peer.node.create_publisher(String, topic, QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        out = tmp_path / f"bag_{sig.name}"
        if sig == signal.SIGTERM:
            # Through the command line a user types (./rosa bag record runs rosa_bag record).
            log = open(tmp_path / "record_cli.log", "w")
            rec = subprocess.Popen([str(node_binary("rosa_bag")), "record", "-o", str(out), topic,
                                    "--ros-args", "-p", "flush_period_sec:=0.2"], env=graph.env(), stdout=log, stderr=subprocess.STDOUT)
        else:
            rec = start_recorder(graph, out, flush_period_sec=0.2, topics=json.dumps([topic]))
        wait_until(lambda: pub.get_subscription_count() >= 1, 20, "the recorder's subscription")
        time.sleep(0.3)
        for i in range(500):
            pub.publish(String(data=f"{sig.name} {i}"))
        # Every message in the recorder's hands (a sample lost in transport under load is resent
        # only at the writer's next heartbeat), then past a few flush periods.
        assert pub.wait_for_all_acked(Duration(seconds=15)), "the recorder did not acknowledge all 500 messages"
        time.sleep(1.0)
        took = stop(rec, sig)
        if sig == signal.SIGTERM:
            assert rec.returncode == 0 and took < 2.0, (rec.returncode, took)
        else:
            # Killed: no summary, metadata.yaml without counts. repair makes it whole.
            r = rosa_bag("repair", out)
            assert r.returncode == 0, r.stderr
            assert "repaired" in r.stdout and "500 messages" in r.stdout, r.stdout
        msgs = read_all_rosbags(out)[topic]
        assert [m.data for m in msgs] == [f"{sig.name} {i}" for i in range(500)]
        assert metadata(out)["message_count"] == 500


def test_an_unwritable_directory_is_a_clear_error(graph, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "something").write_text("x")
    rec = start_recorder(graph, ro)
    rec.wait(timeout=20)
    assert rec.returncode == 78, graph.log("bag_recorder")
    assert "exists and is not empty" in graph.log("bag_recorder")
    rec = graph.start("bag_recorder", output=json.dumps("/proc/rosa/bag"))
    rec.wait(timeout=20)
    assert rec.returncode == 78 and "cannot record into /proc/rosa/bag" in graph.log("bag_recorder")


def test_a_full_disk_stops_recording_with_a_clear_error_and_the_graph_goes_on(graph, peer, tmp_path):
    from mcap.records import Message
    from mcap.stream_reader import StreamReader

    disk = tmp_path / "small_disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a 2 MiB tmpfs here (needs root): the full-disk case is not exercised")
    try:
        graph.start("process_manager")
        pub = peer.node.create_publisher(String, "/rosa/probe", QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        rec = start_recorder(graph, disk / "bag", flush_period_sec=0.05, topics=json.dumps(["/rosa/probe"]))
        wait_until(lambda: pub.get_subscription_count() >= 1, 20, "the recorder's subscription")
        for i in range(4000):  # ~4 MB for a 2 MiB disk
            pub.publish(String(data=f"{i:05d}" + "x" * 1000))
            if i % 100 == 0:
                time.sleep(0.02)
        rec.wait(timeout=20)
        log = graph.log("bag_recorder")
        assert rec.returncode == 78, log
        assert "the disk is full: recording stopped" in log, log
        assert graph.alive("process_manager")
        # What was flushed before the disk filled is there, in order.
        data = (disk / "bag" / "bag_0.mcap").read_bytes()
        got = []
        try:
            for r in StreamReader(io.BytesIO(data), skip_magic=False).records:
                if isinstance(r, Message):
                    got.append(r.data)
        except Exception:  # noqa: BLE001 -- the file ends where the disk filled
            pass
        assert len(got) > 100, len(got)
        assert [int(bytes(d[8:13])) for d in got] == list(range(len(got)))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_play_keeps_the_recorded_timing(graph, peer, tmp_path):
    out = tmp_path / "timing"
    pub = peer.node.create_publisher(String, "/rosa/tick", RELIABLE)
    rec = start_recorder(graph, out, topics=json.dumps(["/rosa/tick"]))  # the bag starts with tick 0
    wait_until(lambda: pub.get_subscription_count() >= 1, 20, "the recorder's subscription")
    t0 = time.monotonic()
    for i in range(30):
        while time.monotonic() < t0 + i * 0.1:
            time.sleep(0.001)
        pub.publish(String(data=str(i)))
    time.sleep(0.5)
    stop(rec)
    peer.node.destroy_publisher(pub)

    got = []
    peer.node.create_subscription(String, "/rosa/tick", lambda m: got.append((time.monotonic(), m.data)), RELIABLE)
    env = graph.env()
    p = rosa_bag("play", out, "--wait-for-subscribers", "5", env=env)
    assert p.returncode == 0, p.stderr
    wait_until(lambda: len(got) == 30, 10, "30 ticks")
    assert [d for _, d in got] == [str(i) for i in range(30)]
    period = (got[-1][0] - got[0][0]) / 29
    assert abs(period - 0.1) <= 0.005, f"{1 / period:.2f} Hz"
    # --rate 2 plays twice as fast; --start-offset skips the first second.
    got.clear()
    p = rosa_bag("play", out, "--rate", "2", "--start-offset", "0.95", "--wait-for-subscribers", "5", env=env)
    assert p.returncode == 0, p.stderr
    wait_until(lambda: len(got) >= 20, 10, "the last 20 ticks")
    assert [d for _, d in got] == [str(i) for i in range(10, 30)]
    period = (got[-1][0] - got[0][0]) / 19
    assert abs(period - 0.05) <= 0.0025, f"{1 / period:.2f} Hz at rate 2"


def test_a_bag_written_by_rosbags_is_described_and_played(peer, domain_id, tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys.stores.ros2_jazzy import std_msgs__msg__String as RString

    ts = get_typestore(Stores.ROS2_JAZZY)
    out = tmp_path / "by_rosbags"
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/rosa/command", RString.__msgtype__, typestore=ts)
        start = 1_700_000_000_000_000_000
        for i in range(5):
            w.write(conn, start + i * 50_000_000, ts.serialize_cdr(RString(data=f"from rosbags {i}"), RString.__msgtype__))
    info = rosa_bag("info", out)
    assert info.returncode == 0, info.stderr
    assert "Topic: /rosa/command | Type: std_msgs/msg/String | Count: 5" in info.stdout
    got = []
    peer.node.create_subscription(String, "/rosa/command", lambda m: got.append(m.data), RELIABLE)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    p = rosa_bag("play", out, "--wait-for-subscribers", "5", env=env)
    assert p.returncode == 0, p.stderr
    wait_until(lambda: len(got) == 5, 10, "5 messages")
    assert got == [f"from rosbags {i}" for i in range(5)]
    bad = rosa_bag("play", tmp_path / "nothing_here")
    assert bad.returncode != 0 and "is not a bag" in bad.stderr


def worker_tasks(llm, after=0):
    """The tasks the workers were given (their first user message), each once, in order."""
    tasks = [worker_task(r["body"]) for r in llm.requests_by("worker")[after:]]
    assert all(tasks), tasks
    return list(dict.fromkeys(tasks))


def test_replaying_a_session_reruns_it_in_a_fresh_graph(graph, peer, llm, robot, tmp_path):
    out = tmp_path / "replay"
    rec = session(graph, peer, out, ["wave at me"], ["move your head left"])
    stop(rec)
    first_calls = [(c["tool"], c["args"]) for c in robot.snapshot()]
    first_tasks = worker_tasks(llm)
    assert len(first_calls) == 2 and len(first_tasks) == 2, (first_calls, first_tasks)
    graph.stop()

    # A fresh graph in another domain, the same scripted LLM and robot; only the user's input replayed.
    robot.clear()
    n_before = len(llm.requests_by("worker"))
    (tmp_path / "fresh").mkdir()
    fresh = Graph(tmp_path / "fresh", fresh_domain_id(), llm.url, {"testbot": robot.url})
    p2 = Peer(fresh.domain_id)
    try:
        fresh.start("process_manager")
        fresh.start("kernel")
        p2.listen("/rosa/worker_callback", WorkerCallback, publishers=1)
        wait_until(lambda: p2.node.count_subscribers("/rosa/command") >= 1, 20, "the kernel's subscription")
        play = rosa_bag("play", out, "--topics", "/rosa/command", "/rosa/stt/transcript", "--wait-for-subscribers", "5",
                        env=fresh.env())
        assert play.returncode == 0, play.stderr
        assert "2 messages played" in play.stderr, play.stderr
        wait_until(lambda: sum(m.final for m in p2.received("/rosa/worker_callback")) >= 2, 40, "both workers' reports")
        again = [(c["tool"], c["args"]) for c in robot.snapshot()]
        assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, first_calls))
        assert worker_tasks(llm, after=n_before) == first_tasks
    finally:
        p2.close()
        fresh.stop()
