//! The `llm_server` node: the embedded local model.
fn main() {
    rosa::node_main("llm_server", rosa::nodes::llm_server::run);
}
