#!/usr/bin/env python3
"""The comparison point of `./rosa bench bridge`: an MCP server in Python on rclpy (the official
`mcp` SDK's FastMCP, streamable HTTP) with the same two calls the bridge benchmark makes —
publish a Twist on a topic, call a std_srvs/Trigger service — the way rclpy-based ROS MCP servers
do them. Not a rosa component: a benchmark peer only.

    python rclpy_mcp_server.py --port P --ns r1
"""

import argparse
import logging
import threading

import rclpy
from geometry_msgs.msg import Twist
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from rclpy.executors import SingleThreadedExecutor
from std_srvs.srv import Trigger


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ns", default="r1")
    a = p.parse_args()
    logging.getLogger("mcp").setLevel(logging.WARNING)
    rclpy.init()
    node = rclpy.create_node("rclpy_mcp_server")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()
    pub = node.create_publisher(Twist, f"/{a.ns}/cmd_vel", 10)
    client = node.create_client(Trigger, f"/{a.ns}/reset")
    mcp = FastMCP("rclpy-bench", host="127.0.0.1", port=a.port, log_level="WARNING",
                  transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))

    @mcp.tool()
    def publish(topic: str, msg: dict) -> str:
        m = Twist()
        lin = msg.get("linear", {})
        m.linear.x = float(lin.get("x", 0.0))
        pub.publish(m)
        return f"published on {topic}"

    @mcp.tool()
    async def call_service(service: str) -> str:
        if not client.wait_for_service(timeout_sec=2.0):
            return "no server"
        fut = client.call_async(Trigger.Request())
        import asyncio
        while not fut.done():
            await asyncio.sleep(0.0005)
        return fut.result().message

    @mcp.tool()
    def list_triggers() -> str:
        return "no triggers"

    mcp.run(transport="streamable-http")


if __name__ == "__main__":
    main()
