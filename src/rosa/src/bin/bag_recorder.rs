//! The `bag_recorder` node: records topics into a rosbag2 MCAP bag.
fn main() {
    rosa::node_main("bag_recorder", rosa::nodes::bag::run_recorder);
}
