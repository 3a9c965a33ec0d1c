r"""`./rosa up`: run the rosa graph on this machine, supervised.

By default the Reachy Mini daemon runs in headless mockup simulation (`--sim mujoco` for physics,
`--reachy-url URL` for a real robot's daemon, `--no-sim` for no robot); once it reports
`"state": "running"` the reachy_driver node starts and serves its MCP tools (default port 5001).

Every node runs as a child process with the parameters of config/rosa.yaml (plus the overrides given
on the command line); its output goes to the terminal, prefixed with the node's name, and to
<log dir>/<node>.log, one line per line with control characters escaped (`\n`, `\u{1b}`…), so that
nothing a node prints (a command's text in its log, say) can forge a line or drive the terminal. A
node that dies is restarted after a delay that grows while it keeps dying (like launch_ros's
respawn=True), unless it exits with code 78 (a configuration error such as a
missing speech model: restarting cannot fix it). Ctrl-C (or SIGTERM) stops every node: SIGINT, then
SIGKILL after a grace period.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXIT_CONFIG = 78  # a node's configuration is wrong: do not restart it (see rosa::node_main)
COLORS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"
# What could break a line or drive the terminal (as rosa::logging::is_unsafe): C0/C1 controls, DEL,
# line/paragraph separators, bidirectional formatting.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text):
    """`text` with its control characters escaped: one line, inert in a terminal."""
    return UNSAFE.sub(lambda m: NAMED.get(m.group(), "\\u{%x}" % ord(m.group())), text)


class Supervised:
    def __init__(self, name, argv, env, log_dir, color, out_lock):
        self.name, self.argv, self.env = name, argv, env
        self.log = open(log_dir / f"{name}.log", "a", buffering=1)
        self.prefix = f"{color}[{name}]{RESET} " if sys.stdout.isatty() else f"[{name}] "
        self.out_lock = out_lock
        self.proc = None
        self.restarts = 0
        self.stopping = False

    def say(self, line):
        line = escape(line[:-1] if line.endswith("\n") else line)
        with self.out_lock:
            sys.stdout.write(self.prefix + line + "\n")
            sys.stdout.flush()
        self.log.write(line + "\n")

    def start(self):
        if self.stopping:
            return
        self.say(f"starting: {' '.join(self.argv)}")
        # Bytes, split on "\n" only: a "\r" inside a line is escaped, not taken for a line end.
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()

    def _pump(self, proc):
        for raw in proc.stdout:
            self.say(raw.decode("utf-8", errors="replace"))

    def check(self):
        """Restart the node if it died (with a growing delay if it keeps dying)."""
        if self.stopping or self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        lived = time.monotonic() - self.started
        if code == EXIT_CONFIG:
            self.say(f"exited with code {code} (a configuration error, see above): not restarting; "
                     "fix it and run ./rosa up again")
            self.proc = None
            self.stopping = True
            return
        self.restarts = 0 if lived > 30 else self.restarts + 1
        delay = min(2.0 * (2 ** max(self.restarts - 1, 0)), 30.0)
        self.say(f"exited with {'signal ' + str(-code) if code < 0 else 'code ' + str(code)} after {lived:.1f} s; "
                 f"restarting in {delay:.0f} s")
        self.proc = None
        threading.Timer(delay, lambda: None if self.stopping else self.start()).start()

    def stop(self):
        self.stopping = True
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, deadline):
        if not self.proc:
            return
        try:
            self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.say("did not stop in time: SIGKILL")
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def load_params(path):
    """The params file as {node section: parameters} ({} if it cannot be read)."""
    try:
        import yaml
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        return {k: (v or {}).get("ros__parameters", {}) for k, v in doc.items() if isinstance(v, dict)}
    except (OSError, ImportError, ValueError) as e:
        print(f"rosa: cannot read {path}: {e}")
        return {}


def probe(url, key_env, timeout=2.0):
    """(answered, why) for GET <url>/models, as the nodes probe a provider."""
    headers = {}
    if key_env:
        key = os.environ.get(key_env, "")
        if not key:
            return False, f"{key_env} is not set"
        headers["Authorization"] = f"Bearer {key}"
    try:
        req = urllib.request.Request(url.rstrip("/") + "/models", headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200, f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        return False, str(getattr(e, "reason", e))


def is_local(url, port):
    u = urllib.parse.urlparse(url)
    return u.hostname in ("127.0.0.1", "localhost") and u.port == port


def choose_llm(args, params):
    """Which LLM the nodes use: (parameter overrides for every node, start llm_server?, its
    overrides, what to print). The user's order is kept: --llm-url, else llm.urls in order; the
    embedded model (llm_server) is the last fallback, and the default when nothing else answers."""
    common = params.get("/**", {})
    llm = common.get("llm", {}) if isinstance(common.get("llm"), dict) else {}
    srv = params.get("/rosa/llm_server", {})
    port = args.llm_port or int(srv.get("port", 6001))
    local_url = f"http://127.0.0.1:{port}/v1"
    local_model = str(srv.get("model_name", "qwen2.5-coder-1.5b-instruct"))
    srv_overrides = ["-p", f"port:={port}"]
    installed, missing = local_installed(srv)
    # The embedded model on a small machine: a worker's first, uncached 2.7k-token prefix alone takes
    # 35-55 s on two idle cores and minutes on busy ones. Its streams carry keep-alives, so the
    # first-token and stall timeouts still tell a dead server from a slow one; only the overall
    # bounds (one attempt, one kernel event) are raised to the server's own request_timeout_sec.
    slow = float(srv.get("request_timeout_sec", 600.0))
    local = (["-p", f"llm.urls:=['{local_url}']", "-p", f"llm.models:=['{local_model}']", "-p", "llm.key_envs:=['']",
              "-p", f"llm.timeout_sec:={slow}", "-p", f"event_deadline_sec:={slow}",
              # and a worker's whole run (process_manager's default timeout_sec)
              "-p", f"timeout_sec:={max(slow, 300.0) * 1.5}",
              # A 1.5B model given a task and tools on `auto` often answers in text without acting
              # (measured: "look to your left" -> "I cannot go on."): its first step must call a tool.
              "-p", "worker_act_first:=true",
              # The kernel's (~0.8k tokens) and a worker's (~2.7k tokens, 35-55 s of prefill here)
              # prompt prefixes are processed while idle, not on the first event and the first task.
              "-p", "warm_prefix:=true"])
    if args.llm_url:
        return [], False, srv_overrides, [f"rosa: LLM: {args.llm_url} (--llm-url; the embedded model is not started)"]
    if args.llm == "local":
        if not installed:
            sys.exit(f"rosa: --llm local: the embedded model is not installed ({missing}); run ./rosa setup")
        return local, True, srv_overrides + ["-p", "preload:=true"], [f"rosa: LLM: the embedded model {local_model} (llm_server, {local_url}; --llm local)"]
    urls = [str(u) for u in llm.get("urls", [])]
    models = [str(m) for m in llm.get("models", [])] or [""]
    keys = [str(k) for k in llm.get("key_envs", [])] or [""]
    if args.llm_model:
        models = [args.llm_model]
    if args.llm_key_env:
        keys = [args.llm_key_env]
    tried = []
    for i, url in enumerate(urls):
        if is_local(url, port):
            break  # the embedded model: used below
        ok, why = probe(url, keys[min(i, len(keys) - 1)])
        if ok:
            note = [f"rosa: LLM: {url} ({models[min(i, len(models) - 1)]}) answered"]
            # The embedded model stays the last fallback, loaded only if it is ever asked.
            start = installed and any(is_local(u, port) for u in urls[i + 1:])
            if start:
                note.append(f"rosa: the embedded model ({local_url}) is the fallback; it loads if it is needed")
            return [], start, srv_overrides + ["-p", "preload:=false"], note
        tried.append(f"{url}: {why}")
    lines = [f"rosa: LLM: no configured provider answered ({'; '.join(tried) or 'none configured'})"]
    if not installed:
        lines.append(f"rosa: the embedded model is not installed ({missing}): run ./rosa setup, or ./rosa up --llm-url URL")
        return [], False, srv_overrides, lines
    lines.append(f"rosa: LLM: using the embedded model {local_model} (llm_server, {local_url})")
    return local, True, srv_overrides + ["-p", "preload:=true"], lines


def local_installed(srv):
    """(installed, what is missing) for the embedded model and llama-server."""
    model = str(srv.get("model", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    dirs = [Path(os.environ["ROSA_MODELS_DIR"])] if os.environ.get("ROSA_MODELS_DIR") else []
    dirs.append(ROOT / ".rosa" / "models")
    found = Path(model) if Path(model).is_absolute() else next((d / model for d in dirs if (d / model).is_file()), None)
    exe = str(srv.get("server_executable") or "") or os.environ.get("ROSA_LLAMA_SERVER") or str(ROOT / ".rosa" / "llama" / "bin" / "llama-server")
    missing = []
    if not found or not found.is_file():
        missing.append(f"no {model} in {', '.join(map(str, dirs))}")
    if not Path(exe).is_file():
        missing.append(f"no {exe}")
    return not missing, "; ".join(missing)


def llm_ready(url):
    try:
        with urllib.request.urlopen(url.rstrip("/").rsplit("/v1", 1)[0] + "/health", timeout=1) as r:
            return json.loads(r.read()).get("status") == "ok"
    except (OSError, ValueError):
        return False


def bridged_robots(path):
    """The robots of a registry file with a `ros:` section (served by the mcp_bridge node)."""
    try:
        import yaml
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, ValueError, ImportError) as e:
        print(f"rosa: cannot read the robots registry {path}: {e}")
        return []
    except Exception as e:  # noqa: BLE001 - a YAML error: the nodes report it too
        print(f"rosa: the robots registry {path} is not valid YAML: {e}")
        return []
    robots = data.get("robots") if isinstance(data, dict) else None
    return [r.get("name") for r in robots or [] if isinstance(r, dict) and r.get("ros") is not None]


def daemon_running(url):
    try:
        with urllib.request.urlopen(url + "/api/daemon/status", timeout=1) as r:
            return json.loads(r.read()).get("state") == "running"
    except (OSError, ValueError):
        return False


def main():
    p = argparse.ArgumentParser(prog="./rosa up", description="Run the rosa graph on this machine.")
    p.add_argument("--llm-url", default=os.environ.get("ROSA_LLM_URL"),
                   help="OpenAI-compatible base URL (env ROSA_LLM_URL; default: the providers of config/rosa.yaml)")
    p.add_argument("--llm-model", default=os.environ.get("ROSA_LLM_MODEL"), help="model name (env ROSA_LLM_MODEL)")
    p.add_argument("--llm-key-env", default=os.environ.get("ROSA_LLM_KEY_ENV"),
                   help="name of the environment variable holding the API key (env ROSA_LLM_KEY_ENV)")
    p.add_argument("--llm", choices=["auto", "local"], default=os.environ.get("ROSA_LLM", "auto"),
                   help="auto (default): the first provider of llm.urls that answers, else the embedded model; "
                        "local: the embedded model (llm_server) whatever else is configured (env ROSA_LLM)")
    p.add_argument("--llm-port", type=int, default=None,
                   help="port of the embedded model's endpoint (default: port of /rosa/llm_server in the params file, 6001)")
    p.add_argument("--robots", default=os.environ.get("ROSA_ROBOTS"),
                   help="robots registry: YAML or the seed's drivers.json (env ROSA_ROBOTS)")
    p.add_argument("--params", default=str(ROOT / "config" / "rosa.yaml"), help="ROS 2 parameters file")
    robot = p.add_mutually_exclusive_group()
    robot.add_argument("--sim", choices=["mockup", "mujoco"], default="mockup",
                       help="simulated Reachy Mini daemon: mockup (no physics, default) or mujoco (physics, headless)")
    robot.add_argument("--reachy-url", default=os.environ.get("ROSA_REACHY_URL"),
                       help="drive the real Reachy Mini whose daemon is at this URL (env ROSA_REACHY_URL); no simulation")
    robot.add_argument("--no-sim", action="store_true", help="no Reachy Mini: neither the daemon nor its driver")
    p.add_argument("--daemon-port", type=int, default=8000, help="port of the simulated daemon (default 8000)")
    p.add_argument("--mcp-port", type=int, default=None,
                   help="port of reachy_driver's MCP server (default: mcp_port of the params file, 5001)")
    p.add_argument("--audio-file", metavar="WAV", default=None,
                   help="the stt node listens to this WAV file (played in real time) instead of the default microphone")
    p.add_argument("--audio-source", metavar="SPEC", default=None,
                   help="the stt node's audio_source: default, device:<name>, file:<wav>, topic:<name> or none")
    p.add_argument("--no-stt", action="store_true", help="do not start the speech-to-text node")
    p.add_argument("--no-web", action="store_true", help="do not start rosa_web (the browser UI, rosbridge and Foxglove)")
    p.add_argument("--record", nargs="?", const="", default=None, metavar="DIR",
                   help="record the session into a rosbag2 MCAP bag DIR (default rosbag2_<date>-<time> here): "
                        "the bag_recorder node, started first; ./rosa bag info/play read it")
    p.add_argument("--no-bridge", action="store_true",
                   help="do not start the mcp_bridge even when the robots registry has robots with a `ros:` section")
    p.add_argument("--log-dir", default=None, help="where node logs go (default .rosa/log/<time>)")
    p.add_argument("--dds-network", action="store_true",
                   help="do not lock DDS to loopback (config/fastdds_loopback.xml): other machines can then "
                        "discover the graph, as ROS_AUTOMATIC_DISCOVERY_RANGE says")
    args = p.parse_args()

    prefix = Path(os.environ.get("ROSA_INSTALL", ROOT / "install")) / "rosa" / "lib" / "rosa"
    if not (prefix / "kernel").exists():
        sys.exit(f"rosa: {prefix}/kernel is missing: run ./rosa setup (or ./rosa build) first")
    log_dir = Path(args.log_dir or ROOT / ".rosa" / "log" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    log_dir.mkdir(parents=True, exist_ok=True)

    if args.llm_url and args.llm == "local":
        p.error("--llm-url and --llm local are exclusive")
    params = load_params(args.params)
    llm_overrides, with_llm_server, llm_server_overrides, llm_notes = choose_llm(args, params)
    overrides = list(llm_overrides)
    if args.llm_url:
        overrides += ["-p", f"llm.urls:=['{args.llm_url}']", "-p", f"llm.key_envs:=['{args.llm_key_env or ''}']"]
    elif args.llm_key_env:
        overrides += ["-p", f"llm.key_envs:=['{args.llm_key_env}']"]
    if args.llm_model and not llm_overrides:
        overrides += ["-p", f"llm.models:=['{args.llm_model}']"]
    if args.robots:
        overrides += ["-p", f"robots_file:={Path(args.robots).resolve()}"]

    node_overrides = {"stt": [], "llm_server": llm_server_overrides}
    if args.audio_file and args.audio_source:
        p.error("--audio-file and --audio-source are exclusive")
    if args.audio_file:
        wav = Path(args.audio_file).resolve()
        if not wav.is_file():
            p.error(f"--audio-file {args.audio_file}: no such file")
        node_overrides["stt"] += ["-p", f"audio_source:=file:{wav}"]
    elif args.audio_source:
        node_overrides["stt"] += ["-p", f"audio_source:={args.audio_source}"]

    env = dict(os.environ)
    profile = ROOT / "config" / "fastdds_loopback.xml"
    if not args.dds_network and not env.get("FASTRTPS_DEFAULT_PROFILES_FILE") and profile.exists():
        # Every DDS socket on 127.0.0.1, no shared-memory transport (README "Sockets").
        # SUBNET makes rmw_fastrtps leave the transports to the profile (LOCALHOST adds a UDP
        # transport on every interface); the profile keeps discovery on this host.
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROSA_CONFIG_DIR", str(ROOT / "config"))
    env.setdefault("RUST_LOG", "info")

    # The nodes, in start order; the Reachy Mini driver once its daemon runs.
    nodes = (["llm_server"] if with_llm_server else []) + ["process_manager", "kernel"] + ([] if args.no_stt else ["stt"]) + ([] if args.no_web else ["rosa_web"])
    if args.record is not None:
        # First, so that it is subscribed before the others publish; stopped last.
        nodes.insert(0, "bag_recorder")
        if args.record:
            node_overrides["bag_recorder"] = ["-p", "output:=" + json.dumps(str(Path(args.record).resolve()))]
    # The MCP bridge when the registry has ROS robots (a `ros:` section).
    registry = Path(args.robots).resolve() if args.robots else Path(env["ROSA_CONFIG_DIR"]) / "robots.yaml"
    bridged = [] if args.no_bridge else bridged_robots(registry)
    if bridged:
        nodes.append("mcp_bridge")
        print(f"rosa: bridging ROS robots {', '.join(map(str, bridged))} through the mcp_bridge "
              f"(http://127.0.0.1:5002/<robot>/mcp)")
    lock = threading.Lock()
    procs = []
    for i, name in enumerate(nodes):
        argv = [str(prefix / name), "--ros-args", "--params-file", args.params, *overrides, *node_overrides.get(name, [])]
        procs.append(Supervised(name, argv, env, log_dir, COLORS[i % len(COLORS)], lock))

    daemon = driver = None
    daemon_url = None
    if not args.no_sim:
        if args.reachy_url:
            daemon_url = args.reachy_url.rstrip("/")
        else:
            exe = Path(os.environ.get("ROSA_REACHY_DAEMON", ROOT / ".rosa" / "reachy" / "bin" / "reachy-mini-daemon"))
            if not exe.exists():
                sys.exit(f"rosa: {exe} is missing: run ./rosa setup (or use --no-sim / --reachy-url)")
            sim = ["--mockup-sim"] if args.sim == "mockup" else ["--sim"]
            daemon_url = f"http://127.0.0.1:{args.daemon_port}"
            denv = dict(env, DO_NOT_TRACK=env.get("DO_NOT_TRACK", "1"))
            daemon = Supervised("reachy_daemon", [str(exe), *sim, "--headless", "--no-media",
                                                  "--fastapi-port", str(args.daemon_port)],
                                denv, log_dir, COLORS[2], lock)
        dargs = ["-p", f"daemon_url:={daemon_url}"]
        if args.mcp_port:
            dargs += ["-p", f"mcp_port:={args.mcp_port}"]
        driver = Supervised("reachy_driver", [str(prefix / "reachy_driver"), "--ros-args", "--params-file",
                                              args.params, *overrides, *dargs], env, log_dir, COLORS[3], lock)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    dds = ("DDS on loopback only (config/fastdds_loopback.xml)" if env.get("FASTRTPS_DEFAULT_PROFILES_FILE") == str(profile)
           else f"DDS discovery range {env['ROS_AUTOMATIC_DISCOVERY_RANGE']}")
    print(f"rosa: logs in {log_dir}; ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID', '0')}; {dds}; Ctrl-C stops everything")
    for line in llm_notes:
        print(line, flush=True)
    if with_llm_server and any("preload:=true" in a for a in llm_server_overrides):
        port = next(a.split(":=")[1] for a in llm_server_overrides if a.startswith("port:="))
        url = f"http://127.0.0.1:{port}/v1"
        t_llm = time.monotonic()

        def announce():
            while not stop.is_set():
                if llm_ready(url):
                    print(f"rosa: the embedded model is loaded and answers at {url} ({time.monotonic() - t_llm:.1f} s)", flush=True)
                    return
                stop.wait(0.5)
        threading.Thread(target=announce, daemon=True).start()
    if daemon:
        daemon.start()
    for s in procs:
        s.start()
    if not args.no_web:
        print("rosa: the UI is at http://127.0.0.1:8765/ (rosbridge v2 and Foxglove WebSocket on ws://127.0.0.1:9090 and :8765)")
    if daemon:
        # The driver starts once the daemon runs (a restarting driver reconnects by itself).
        t0 = time.monotonic()
        while not stop.is_set() and not daemon_running(daemon_url):
            daemon.check()
            if time.monotonic() - t0 > 120:
                print("rosa: the Reachy Mini daemon is still not running after 120 s; starting the driver anyway")
                break
            stop.wait(0.3)
        else:
            if not stop.is_set():
                print(f"rosa: Reachy Mini daemon running at {daemon_url} ({time.monotonic() - t0:.1f} s)")
        procs.insert(0, daemon)
    if driver and not stop.is_set():
        driver.start()
        procs.append(driver)
    while not stop.wait(0.5):
        for s in procs:
            s.check()
    print("\nrosa: stopping")
    for s in reversed(procs):
        s.stop()
    deadline = time.monotonic() + 6
    for s in reversed(procs):
        s.wait(deadline)
    print("rosa: stopped")


if __name__ == "__main__":
    main()
