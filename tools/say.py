"""`./rosa say TEXT`: publish a text command, like
`ros2 topic pub --once /rosa/command std_msgs/msg/String "{data: 'TEXT'}"`."""

import sys
import time

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String


def main():
    text = " ".join(sys.argv[1:]).strip()
    if not text:
        sys.exit("usage: ./rosa say \"text\"")
    rclpy.init()
    node = rclpy.create_node("rosa_say")
    pub = node.create_publisher(String, "/rosa/command", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + 5.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if pub.get_subscription_count() == 0:
        print("rosa say: nobody subscribes to /rosa/command (is `./rosa up` running, in this ROS_DOMAIN_ID?)",
              file=sys.stderr)
        sys.exit(1)
    pub.publish(String(data=text))
    # Let reliable delivery complete before the process goes.
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(f"published to /rosa/command: {text}")
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
