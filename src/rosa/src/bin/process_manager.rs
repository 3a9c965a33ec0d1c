//! The `process_manager` node.
fn main() {
    rosa::node_main("process_manager", rosa::nodes::process_manager::run);
}
