#!/usr/bin/env python3
"""rosa_web's benchmark, side by side with rosbridge_suite when one is given.

    ./rosa bench web [--seconds 5] [--rate 10000] [--clients 10] [--rosbridge-suite PREFIX] [--json OUT]

An rclpy publisher in this process publishes std_msgs/msg/String messages whose data starts with
the publish time (ns since the epoch); roslibjs 2.x clients (test/bench/web_client.mjs, one node
process each) subscribe through the server and note the receive time. Phases:
  idle      RSS of the server, no client, 3 s after start
  one       one client, one topic, `--rate` msg/s for `--seconds`: msg/s received, loss
  ten       `--clients` clients on that topic at rate/10: msg/s delivered in total, loss
  latency   one client, 100 Hz for `--seconds`: publish → client p50/p95/max
  probe     a client takes 20 topics × 50 Hz while another takes a 10 Hz probe: the probe's share
CPU of the server (utime+stime from /proc) per phase. Both servers run on this machine, on
loopback, with their own DDS domain (ROSA_BENCH_DOMAIN, default 100).

rosbridge_suite (--rosbridge-suite PREFIX): a prefix where its packages (rosbridge_library,
rosbridge_server, rosapi, rosapi_msgs, rosbridge_msgs) are installed, e.g. built from its sources
with colcon into a tmp dir (never committed); its rosbridge_websocket is started with that prefix
on the Python path.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DOMAIN = int(os.environ.get("ROSA_BENCH_DOMAIN", "100"))
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
HERE = Path(__file__).resolve().parent
TEST = HERE.parent
ROOT = TEST.parent
sys.path.insert(0, str(TEST))

import rclpy  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from conftest import install_prefix, wait_until  # noqa: E402


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_stat(pid):
    """(RSS KiB, CPU seconds) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Server:
    def __init__(self, name, argv, env, port, log):
        self.name, self.port = name, port
        self.log = open(log, "w")
        self.p = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.logpath = log

    def url(self):
        return f"ws://127.0.0.1:{self.port}"

    def wait_ready(self):
        import socket

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_until(up, 60, f"{self.name} to listen on {self.port}")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(2)
            try:
                self.p.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def start_rosa_web(tmp):
    port = free_port()
    exe = install_prefix() / "rosa" / "lib" / "rosa" / "rosa_web"
    argv = [str(exe), "--ros-args", "--params-file", str(ROOT / "config" / "rosa.yaml"), "-p", f"ports:=[{port}]"]
    env = dict(os.environ, RUST_LOG="warn")
    return Server("rosa_web", argv, env, port, tmp / "rosa_web.log")


def start_rosbridge_suite(tmp, prefix):
    port = free_port()
    base = Path(prefix)
    # A merged prefix, or colcon's isolated install base (one prefix per package).
    prefixes = [base] if (base / "lib" / "rosbridge_server").exists() else sorted(p for p in base.iterdir() if (p / "share").is_dir())
    site = [s for p in prefixes for s in sorted(p.glob("lib/python3*/site-packages"))]
    env = dict(os.environ)
    extra = os.environ.get("ROSBRIDGE_SUITE_PYTHONPATH", "")  # its pip dependencies (tornado, pymongo's bson, Pillow)
    env["PYTHONPATH"] = ":".join([str(s) for s in site] + [extra, env.get("PYTHONPATH", "")])
    env["AMENT_PREFIX_PATH"] = ":".join([str(p) for p in prefixes] + [env.get("AMENT_PREFIX_PATH", "")])
    env["LD_LIBRARY_PATH"] = ":".join([f"{p}/lib" for p in prefixes] + [env.get("LD_LIBRARY_PATH", "")])
    script = next(p / "lib" / "rosbridge_server" / "rosbridge_websocket" for p in prefixes if (p / "lib" / "rosbridge_server").exists())
    argv = [sys.executable, str(script), "--ros-args", "-p", f"port:={port}", "-p", "address:=127.0.0.1"]
    return Server("rosbridge_suite", argv, env, port, tmp / "rosbridge_suite.log")


class Clients:
    """roslibjs clients in node processes."""

    def __init__(self, url, topic_sets):
        self.ps = []
        for topics in topic_sets:
            p = subprocess.Popen(["node", str(HERE / "web_client.mjs"), url, *topics], cwd=TEST, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.ps.append(p)
        for p in self.ps:
            line = p.stderr.readline()
            if "subscribed" not in line:
                raise RuntimeError(f"a client did not subscribe: {line}")

    def results(self):
        out = []
        for p in self.ps:
            p.stdin.close()
        for p in self.ps:
            o = p.stdout.read()
            p.wait(timeout=60)
            out.append(json.loads(o.strip().splitlines()[-1]))
        return out


def publish_paced(pubs, rate, seconds, payload=32):
    """Publish on each publisher at `rate` msg/s (each) for `seconds`; returns messages sent (each)."""
    pad = "x" * payload
    n = int(rate * seconds)
    t0 = time.monotonic()
    batch = max(1, int(rate / 200))  # publish in small batches, 200 batches/s
    sent = 0
    while sent < n:
        for _ in range(min(batch, n - sent)):
            data = f"{time.time_ns()} {pad}"
            for p in pubs:
                p.publish(String(data=data))
            sent += 1
        target = t0 + sent / rate
        d = target - time.monotonic()
        if d > 0:
            time.sleep(d)
    return sent, time.monotonic() - t0


def wait_subscribers(pubs, n=1):
    for p in pubs:
        wait_until(lambda: p.get_subscription_count() >= n, 20, f"{n} subscriber(s) of {p.topic_name}")
    time.sleep(0.5)


def run(server, node, args):
    res = {}
    server.wait_ready()
    time.sleep(3)
    res["idle_rss_mb"] = round(proc_stat(server.p.pid)[0] / 1024, 1)
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    main = node.create_publisher(String, f"/bench/{server.name}/main", qos)

    # one client
    c = Clients(server.url(), [[main.topic_name]])
    wait_subscribers([main])
    cpu0 = proc_stat(server.p.pid)[1]
    sent, dur = publish_paced([main], args.rate, args.seconds)
    time.sleep(2.0)
    cpu1 = proc_stat(server.p.pid)[1]
    r = c.results()[0]
    span = max(1e-9, (r["last_ms"] - r["first_ms"]) / 1000) if r["received"] else float("nan")
    res["one"] = {"sent": sent, "publish_rate": round(sent / dur), "received": r["received"],
                  "recv_rate": round(r["received"] / span) if r["received"] else 0,
                  "loss_pct": round(100 * (1 - r["received"] / sent), 2),
                  "lat_p50_ms": round(pct(r["lat_ms"], 50), 2), "lat_p95_ms": round(pct(r["lat_ms"], 95), 2),
                  "server_cpu_pct": round(100 * (cpu1 - cpu0) / (dur + 2.0))}
    print(f"  {server.name} one client: {res['one']}", flush=True)
    time.sleep(1)

    # ten clients
    rate10 = args.rate / args.clients
    c = Clients(server.url(), [[main.topic_name]] * args.clients)
    wait_subscribers([main])
    cpu0 = proc_stat(server.p.pid)[1]
    sent, dur = publish_paced([main], rate10, args.seconds)
    time.sleep(2.0)
    cpu1 = proc_stat(server.p.pid)[1]
    rs = c.results()
    total = sum(r["received"] for r in rs)
    lats = [x for r in rs for x in r["lat_ms"]]
    res["ten"] = {"clients": args.clients, "sent_each": sent, "delivered_total": total,
                  "delivered_rate": round(total / dur), "loss_pct": round(100 * (1 - total / (sent * args.clients)), 2),
                  "lat_p50_ms": round(pct(lats, 50), 2), "lat_p95_ms": round(pct(lats, 95), 2),
                  "server_cpu_pct": round(100 * (cpu1 - cpu0) / (dur + 2.0))}
    print(f"  {server.name} {args.clients} clients: {res['ten']}", flush=True)
    time.sleep(1)

    # latency at 100 Hz
    c = Clients(server.url(), [[main.topic_name]])
    wait_subscribers([main])
    sent, dur = publish_paced([main], 100, args.seconds)
    time.sleep(1.0)
    r = c.results()[0]
    res["latency_100hz"] = {"sent": sent, "received": r["received"], "p50_ms": round(pct(r["lat_ms"], 50), 2),
                            "p95_ms": round(pct(r["lat_ms"], 95), 2), "max_ms": round(max(r["lat_ms"] or [float("nan")]), 2)}
    print(f"  {server.name} latency at 100 Hz: {res['latency_100hz']}", flush=True)

    # probe: 20 topics x 50 Hz to one client, a 10 Hz probe to another
    flood = [node.create_publisher(String, f"/bench/{server.name}/flood{i}", qos) for i in range(20)]
    probe = node.create_publisher(String, f"/bench/{server.name}/probe", qos)
    heavy = Clients(server.url(), [[p.topic_name for p in flood]])
    light = Clients(server.url(), [[probe.topic_name]])
    wait_subscribers(flood + [probe])
    stop = threading.Event()
    probe_sent = [0]

    def probe_loop():
        t0 = time.monotonic()
        while not stop.is_set():
            probe.publish(String(data=f"{time.time_ns()} probe"))
            probe_sent[0] += 1
            d = t0 + probe_sent[0] / 10 - time.monotonic()
            if d > 0:
                time.sleep(d)
    t = threading.Thread(target=probe_loop)
    t.start()
    cpu0 = proc_stat(server.p.pid)[1]
    sent, dur = publish_paced(flood, 50, args.seconds * 2, payload=200)
    stop.set()
    t.join()
    time.sleep(1.0)
    cpu1 = proc_stat(server.p.pid)[1]
    hr = heavy.results()[0]
    lr = light.results()[0]
    res["probe"] = {"flood_sent": sent * 20, "flood_received": hr["received"], "probe_sent": probe_sent[0],
                    "probe_received": lr["received"], "probe_pct": round(100 * lr["received"] / max(1, probe_sent[0]), 1),
                    "probe_p95_ms": round(pct(lr["lat_ms"], 95), 2), "server_cpu_pct": round(100 * (cpu1 - cpu0) / (dur + 1.0))}
    print(f"  {server.name} probe: {res['probe']}", flush=True)
    res["rss_after_mb"] = round(proc_stat(server.p.pid)[0] / 1024, 1)
    return res


def main():
    ap = argparse.ArgumentParser(prog="./rosa bench web")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=10000.0, help="msg/s offered to one client")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rosbridge-suite", metavar="PREFIX", help="install prefix of rosbridge_suite (built from its sources)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    if not (TEST / "node_modules" / "roslib").exists():
        sys.exit("test/node_modules is missing: run ./rosa setup")
    rclpy.init(domain_id=DOMAIN)
    node = rclpy.create_node("bench_web_publisher")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-web-") as d:
        tmp = Path(d)
        starts = [("rosa_web", lambda: start_rosa_web(tmp))]
        if args.rosbridge_suite:
            starts.append(("rosbridge_suite", lambda: start_rosbridge_suite(tmp, args.rosbridge_suite)))
        for name, start in starts:
            print(f"{name}:", flush=True)
            s = start()
            try:
                results[name] = run(s, node, args)
            except Exception as e:  # a server that falls over is a result too
                import traceback
                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"  {name} failed: {e}\n  log: {Path(s.logpath).read_text()[-2000:]}", flush=True)
            finally:
                s.stop()
    node.destroy_node()
    rclpy.shutdown()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
