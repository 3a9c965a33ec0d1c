//! The `rosa_web` node: rosbridge v2, the Foxglove WebSocket protocol and the browser UI.
fn main() {
    rosa::node_main("rosa_web", rosa::nodes::rosa_web::run);
}
