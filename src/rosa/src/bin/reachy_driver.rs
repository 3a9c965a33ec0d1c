//! The `reachy_driver` node: the Reachy Mini daemon on the ROS graph, and its MCP tools.
fn main() {
    rosa::node_main("reachy_driver", rosa::nodes::reachy_driver::run);
}
