//! The `stt` node: audio → VAD → whisper → /rosa/stt/transcript.
fn main() {
    rosa::node_main("stt", rosa::nodes::stt::run);
}
