#!/usr/bin/env python3
"""Recording throughput of the bag_recorder node (`./rosa bench bag`).

    ./rosa bench bag [--small N] [--large N] [--dir DIR] [--json OUT]

For each case, the real `bag_recorder` records one topic while the `bag_bench_pub` example (a
Rust publisher on the dynamic-message layer: reliable, keep all) publishes N std_msgs/String
messages of 1 kB, then of 1 MB, as fast as the middleware takes them. The bag is then finished
(SIGINT) and its metadata.yaml read: the figure counts only if every message is in the bag. The
recorder's CPU time (utime+stime from /proc) and peak RSS (VmHWM) are reported too. Targets
(issue 11): >= 50,000 small msgs/s, >= 200 MB/s, RSS <= 30 MB.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

DOMAIN = int(os.environ.get("ROSA_BENCH_DOMAIN", "100"))
ROOT = Path(__file__).resolve().parents[2]
INSTALL = Path(os.environ.get("ROSA_INSTALL", ROOT / "install"))
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def proc_hwm_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def case(name, size, count, base, env, publisher):
    out = base / name
    rec = subprocess.Popen([str(INSTALL / "rosa" / "lib" / "rosa" / "bag_recorder"), "--ros-args",
                            "--params-file", str(ROOT / "config" / "rosa.yaml"),
                            "-p", f"output:={json.dumps(str(out))}", "-p", 'topics:=["/bench/bag"]',
                            "-p", "discovery_period_sec:=0.05"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        cpu0 = proc_cpu(rec.pid)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        pub = subprocess.run([str(publisher), "--topic", "/bench/bag", "--size", str(size), "--count", str(count)],
                             env=env, capture_output=True, text=True, timeout=600)
        if pub.returncode != 0:
            raise SystemExit(f"bench publisher failed: {pub.stderr[-2000:]}")
        figures = json.loads(pub.stdout.strip().splitlines()[-1])
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the publisher's (the recorder is not reaped yet)
        pub_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        cpu = proc_cpu(rec.pid) - cpu0
        wall = time.monotonic() - t0
        hwm = proc_hwm_mb(rec.pid)
        t_stop = time.monotonic()
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
        finish = time.monotonic() - t_stop
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    recorded = meta["message_count"]
    secs = figures["seconds"]
    size_on_disk = sum(f.stat().st_size for f in out.glob("*.mcap"))
    shutil.rmtree(out, ignore_errors=True)
    return {
        "case": name, "message_bytes": size, "published": count, "recorded": recorded, "lost": count - recorded,
        "msgs_per_s": count / secs, "mb_per_s": figures["bytes"] / secs / 1e6, "publish_seconds": secs,
        "recorder_cpu_s": cpu, "recorder_cpu_pct": 100 * cpu / wall, "recorder_peak_rss_mb": hwm,
        "publisher_cpu_s": pub_cpu,  # its whole run: start-up, matching, the publish loop, 1 s tail
        "finish_seconds": finish, "bag_mb": size_on_disk / 1e6,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=int, default=200_000, help="1 kB messages (default 200000)")
    p.add_argument("--large", type=int, default=1000, help="1 MB messages (default 1000)")
    p.add_argument("--dir", default=None, help="where the bags go (default a temporary directory under /tmp)")
    p.add_argument("--json", default=None, help="write the figures here too")
    args = p.parse_args()
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", RUST_LOG="warn")
    publisher = ROOT / "build" / "rosa" / "release" / "examples" / "bag_bench_pub"
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="rosa-bench-bag-"))
    base.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for name, size, count in (("small_1kB", 1000, args.small), ("large_1MB", 1_000_000, args.large)):
            r = case(name, size, count, base, env, publisher)
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\n{'case':<10} {'msgs/s':>10} {'MB/s':>8} {'lost':>6} {'pub s':>7} {'rec CPU %':>10} {'pub CPU s':>10} {'peak RSS MB':>12}")
    for r in results:
        print(f"{r['case']:<10} {r['msgs_per_s']:>10.0f} {r['mb_per_s']:>8.1f} {r['lost']:>6} {r['publish_seconds']:>7.2f} {r['recorder_cpu_pct']:>10.0f}"
              f" {r['publisher_cpu_s']:>10.2f} {r['recorder_peak_rss_mb']:>12.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
