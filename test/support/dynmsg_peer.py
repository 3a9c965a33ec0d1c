"""An independent rclpy peer for the dynamic-message layer's tests (src/rosa/tests/dynmsg_ros.rs).

Commands arrive as JSON lines on stdin, one answer per line on stdout ({"id", "ok", ...}):
publish (rclpy messages filled from plain values), subscribe/received (raw bytes as they arrived,
rclpy's deserialisation of them, and rclpy's own serialisation of those values), serialize, serve
(a service answering with the request's values), call, action_server (a Fibonacci-like server
with feedback and cancel), count, get_param, quit. The node declares parameters at start.
"""

import argparse
import importlib
import json
import os
import sys
import threading
import time

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message


def load(type_name):
    pkg, ns, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{ns}"), name)


def base_of(t):
    if t.startswith("sequence<"):
        t = t[len("sequence<"):].rstrip(">").split(",")[0].strip()
    if "[" in t:
        t = t[: t.index("[")]
    return t


def is_array(t):
    return t.startswith("sequence<") or t.endswith("]")


def nested_class(t):
    pkg, name = t.split("/")[0], t.split("/")[-1]
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def fill(msg, values):
    types = msg.get_fields_and_field_types()
    for k, v in values.items():
        t = types[k]
        b = base_of(t)
        if "/" in b:
            if is_array(t):
                setattr(msg, k, [fill(nested_class(b)(), e) for e in v])
            else:
                fill(getattr(msg, k), v)
        elif b == "octet":
            setattr(msg, k, [bytes([x]) for x in v] if is_array(t) else bytes([v]))
        else:
            setattr(msg, k, v)
    return msg


def to_plain(v):
    if hasattr(v, "get_fields_and_field_types"):
        return {k: to_plain(getattr(v, k)) for k in v.get_fields_and_field_types()}
    if isinstance(v, bytes):
        return v[0] if len(v) == 1 else list(v)
    if isinstance(v, (list, tuple)) or type(v).__name__ in ("ndarray", "array"):
        return [to_plain(x) for x in v]
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def qos_of(spec):
    spec = spec or {}
    q = QoSProfile(depth=spec.get("depth", 100))
    q.reliability = ReliabilityPolicy.BEST_EFFORT if spec.get("reliability") == "best_effort" else ReliabilityPolicy.RELIABLE
    q.durability = DurabilityPolicy.TRANSIENT_LOCAL if spec.get("durability") == "transient_local" else DurabilityPolicy.VOLATILE
    return q


class Peer:
    def __init__(self, name):
        rclpy.init()
        self.node = rclpy.create_node(name)
        self.node.declare_parameter("speed", 0.5)
        self.node.declare_parameter("label", "peer")
        self.node.declare_parameter("flags", [True, False])
        self.group = ReentrantCallbackGroup()
        self.executor = MultiThreadedExecutor(num_threads=4)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.received = {}
        self.requests = {}
        self.keep = []
        self.pubs = {}
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def op_publish(self, c):
        cls = load(c["type"])
        key = (c["topic"], c["type"], json.dumps(c.get("qos")))
        pub = self.pubs.get(key)
        if pub is None:
            pub = self.pubs[key] = self.node.create_publisher(cls, c["topic"], qos_of(c.get("qos")))
        deadline = time.monotonic() + c.get("wait_subscribers", 0)
        while c.get("wait_subscribers") and pub.get_subscription_count() < c.get("subscribers", 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        msg = fill(cls(), c.get("values", {}))
        for _ in range(c.get("count", 1)):
            pub.publish(msg)
            time.sleep(c.get("period", 0))
        return {"hex": serialize_message(msg).hex()}

    def op_subscribe(self, c):
        cls = load(c["type"])
        topic = c["topic"]
        self.received[topic] = []

        def cb(raw, topic=topic, cls=cls):
            msg = deserialize_message(raw, cls)
            with self.lock:
                self.received[topic].append({"raw": bytes(raw).hex(), "values": to_plain(msg), "reserialized": serialize_message(msg).hex()})

        self.keep.append(self.node.create_subscription(cls, topic, cb, qos_of(c.get("qos")), raw=True, callback_group=self.group))
        return {}

    def op_received(self, c):
        deadline = time.monotonic() + c.get("timeout", 0)
        while True:
            with self.lock:
                got = list(self.received.get(c["topic"], []))
            if len(got) >= c.get("count", 0) or time.monotonic() >= deadline:
                return {"messages": got}
            time.sleep(0.01)

    def op_serialize(self, c):
        return {"hex": serialize_message(fill(load(c["type"])(), c.get("values", {}))).hex()}

    def op_serve(self, c):
        cls = load(c["type"])
        name = c["service"]
        self.requests[name] = []

        def handle(req, resp, name=name):
            values = to_plain(req)
            with self.lock:
                self.requests[name].append(values)
            reply = {k: v for k, v in values.items() if k in resp.get_fields_and_field_types()}
            if "string_value" in reply:
                reply["string_value"] += " (peer)"
            if c.get("reply"):
                reply = c["reply"]
            return fill(resp, reply)

        self.keep.append(self.node.create_service(cls, name, handle, callback_group=self.group))
        return {}

    def op_requests(self, c):
        with self.lock:
            return {"requests": list(self.requests.get(c["service"], []))}

    def op_call(self, c):
        cls = load(c["type"])
        cli = self.node.create_client(cls, c["service"], callback_group=self.group)
        if not cli.wait_for_service(timeout_sec=c.get("timeout", 10)):
            raise RuntimeError(f"no server for {c['service']}")
        fut = cli.call_async(fill(cls.Request(), c.get("values", {})))
        deadline = time.monotonic() + c.get("timeout", 10)
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not fut.done():
            raise RuntimeError("no response")
        return {"response": to_plain(fut.result())}

    def op_action_server(self, c):
        cls = load(c["type"])
        period = c.get("period", 0.1)
        self.goals = []

        def execute(handle):
            fb = cls.Feedback()
            seq = [0, 1]
            for _ in range(max(handle.request.order - 1, 0)):
                if handle.is_cancel_requested:
                    handle.canceled()
                    return cls.Result(sequence=seq)
                seq.append(seq[-1] + seq[-2])
                fb.sequence = seq
                handle.publish_feedback(fb)
                time.sleep(period)
            handle.succeed()
            return cls.Result(sequence=seq)

        def goal_cb(req):
            self.goals.append(req.order)
            return GoalResponse.REJECT if req.order < 0 else GoalResponse.ACCEPT

        self.keep.append(
            ActionServer(self.node, cls, c["action"], execute, goal_callback=goal_cb,
                         cancel_callback=lambda _: CancelResponse.ACCEPT, callback_group=self.group)
        )
        return {}

    def op_count(self, c):
        return {"publishers": self.node.count_publishers(c["topic"]), "subscribers": self.node.count_subscribers(c["topic"])}

    def op_get_param(self, c):
        return {"value": self.node.get_parameter(c["name"]).value}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="dynmsg_peer")
    args = ap.parse_args()
    peer = Peer(args.name)
    print(json.dumps({"id": 0, "ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        c = json.loads(line)
        if c["op"] == "quit":
            break
        try:
            out = getattr(peer, "op_" + c["op"])(c)
            out.update(id=c.get("id"), ok=True)
        except Exception as e:  # the test reads the error
            out = {"id": c.get("id"), "ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    # Leave without tearing down rclpy under its executor threads (that aborts in C++).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
