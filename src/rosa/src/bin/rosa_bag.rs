//! `rosa_bag record|info|play|repair` (what `./rosa bag` runs).
fn main() {
    rosa::node_main("rosa bag", rosa::nodes::bag::run_tool);
}
