//! The `worker` node.
fn main() {
    rosa::node_main("worker", rosa::nodes::worker::run);
}
