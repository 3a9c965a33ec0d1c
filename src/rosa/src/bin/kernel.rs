//! The `kernel` node.
fn main() {
    rosa::node_main("kernel", rosa::nodes::kernel::run);
}
