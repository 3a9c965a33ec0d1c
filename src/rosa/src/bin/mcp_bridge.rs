//! The `mcp_bridge` node: other ROS robots' topics, services, actions and parameters as MCP tools.
fn main() {
    rosa::node_main("mcp_bridge", rosa::nodes::mcp_bridge::run);
}
