"""A fixture robot for the mcp_bridge tests: an rclpy node in its own namespace with its own
topics, a service, an action server and parameters. Run as a process
(`python bridge_fixture.py --ns r1`); it prints one JSON line per thing it receives on stdout
(`{"event": "cmd_vel", ...}`) and `{"event": "ready"}` once everything is up.

- subscribes `cmd_vel` (geometry_msgs/Twist) and `secret_plan` (std_msgs/String)
- publishes `battery` (sensor_msgs/BatteryState, 10 Hz; `percentage` from the parameter
  `battery_percentage`), `odom` (nav_msgs/Odometry, 10 Hz), `scan` (sensor_msgs/LaserScan, 2 MB, on
  demand through the `publish_scan` service), `camera/image` (sensor_msgs/Image 640x480 rgb8, 2 Hz),
  `tf` (odom -> base_link) and `tf_static` (base_link -> laser)
- serves `reset` (std_srvs/Trigger, counts calls) and `set_enabled` (std_srvs/SetBool)
- an action server `fibonacci` (test_msgs/action/Fibonacci): one feedback per `action_period`
  seconds, `order` steps; cancellable
- parameters `max_speed` (double), `label` (string), `battery_percentage` (double)
"""

import argparse
import json
import sys
import threading
import time

import rclpy
from geometry_msgs.msg import TransformStamped, Twist
from nav_msgs.msg import Odometry
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import BatteryState, Image, LaserScan
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from test_msgs.action import Fibonacci
from tf2_msgs.msg import TFMessage

out_lock = threading.Lock()


def emit(**kw):
    with out_lock:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()


class Fixture(Node):
    def __init__(self, ns, action_period):
        super().__init__("fixture", namespace=ns)
        self.group = ReentrantCallbackGroup()
        self.declare_parameter("max_speed", 1.0)
        self.declare_parameter("label", "turtle")
        self.declare_parameter("battery_percentage", 0.9)
        self.action_period = action_period
        self.create_subscription(Twist, "cmd_vel", self.on_cmd_vel, 100)
        self.create_subscription(String, "secret_plan", lambda m: emit(event="secret_plan", data=m.data), 10)
        self.battery = self.create_publisher(BatteryState, "battery", 10)
        self.odom = self.create_publisher(Odometry, "odom", 10)
        self.scan = self.create_publisher(LaserScan, "scan", 10)
        self.image = self.create_publisher(Image, "camera/image", 10)
        self.tf = self.create_publisher(TFMessage, "tf", 100)
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.tf_static = self.create_publisher(TFMessage, "tf_static", latched)
        self.create_service(Trigger, "reset", self.on_reset)
        self.create_service(SetBool, "set_enabled", self.on_set_enabled)
        self.create_service(Trigger, "publish_scan", self.on_publish_scan)
        self.resets = 0
        ActionServer(self, Fibonacci, "fibonacci", execute_callback=self.execute,
                     goal_callback=lambda g: GoalResponse.ACCEPT,
                     cancel_callback=lambda g: CancelResponse.ACCEPT, callback_group=self.group)
        self.create_timer(0.1, self.tick)
        self.create_timer(0.5, self.tick_image)
        self.x = 0.0
        st = TransformStamped()
        st.header.frame_id = "base_link"
        st.child_frame_id = "laser"
        st.transform.translation.x = 0.2
        st.transform.translation.z = 0.1
        st.transform.rotation.w = 1.0
        self.tf_static.publish(TFMessage(transforms=[st]))

    def on_cmd_vel(self, m):
        emit(event="cmd_vel", linear=[m.linear.x, m.linear.y, m.linear.z], angular=[m.angular.x, m.angular.y, m.angular.z],
             t=time.time())

    def on_reset(self, req, resp):
        self.resets += 1
        emit(event="reset", count=self.resets)
        resp.success = True
        resp.message = f"reset {self.resets}"
        return resp

    def on_set_enabled(self, req, resp):
        emit(event="set_enabled", data=req.data)
        resp.success = True
        resp.message = f"enabled={req.data}"
        return resp

    def on_publish_scan(self, req, resp):
        m = LaserScan()
        m.header.frame_id = "laser"
        m.ranges = [1.0] * 500_000  # 2 MB of float32
        m.angle_increment = 0.001
        self.scan.publish(m)
        resp.success = True
        return resp

    def tick(self):
        b = BatteryState()
        b.percentage = float(self.get_parameter("battery_percentage").value)
        b.voltage = 12.0
        self.battery.publish(b)
        o = Odometry()
        o.header.frame_id = "odom"
        o.child_frame_id = "base_link"
        o.pose.pose.position.x = self.x
        self.odom.publish(o)
        t = TransformStamped()
        t.header.stamp = self.get_clock().now().to_msg()
        t.header.frame_id = "odom"
        t.child_frame_id = "base_link"
        t.transform.translation.x = 1.0
        t.transform.rotation.z = 0.7071067811865476
        t.transform.rotation.w = 0.7071067811865476
        self.tf.publish(TFMessage(transforms=[t]))

    def tick_image(self):
        m = Image()
        m.width, m.height, m.encoding, m.step = 640, 480, "rgb8", 640 * 3
        m.data = bytes([200, 40, 40]) * (640 * 480)
        self.image.publish(m)

    def execute(self, handle):
        order = handle.request.order
        emit(event="goal", order=order)
        fb = Fibonacci.Feedback()
        seq = [0, 1]
        for i in range(order):
            if handle.is_cancel_requested:
                handle.canceled()
                emit(event="goal_canceled", step=i)
                r = Fibonacci.Result()
                r.sequence = seq
                return r
            seq.append(seq[-1] + seq[-2])
            fb.sequence = seq
            handle.publish_feedback(fb)
            time.sleep(self.action_period)
        handle.succeed()
        emit(event="goal_done", order=order)
        r = Fibonacci.Result()
        r.sequence = seq
        return r


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ns", default="r1")
    p.add_argument("--action-period", type=float, default=0.1)
    a = p.parse_args()
    rclpy.init()
    node = Fixture(a.ns, a.action_period)
    ex = MultiThreadedExecutor(num_threads=4)
    ex.add_node(node)
    emit(event="ready", ns=a.ns)
    try:
        ex.spin()
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass


if __name__ == "__main__":
    main()
