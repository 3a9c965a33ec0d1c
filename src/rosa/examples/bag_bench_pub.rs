//! The publisher of `./rosa bench bag`: publishes `--count` std_msgs/msg/String messages of
//! `--size` bytes on `--topic` as fast as the middleware takes them (reliable, keep all: a
//! publisher that outruns its subscribers waits instead of losing), once `--subscribers` are
//! matched. Prints one JSON line: messages, bytes, seconds.

use rosa::dynmsg::{DynNode, Registry};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}

fn main() {
    let topic = arg("--topic", "/bench/bag");
    let size: usize = arg("--size", "1000").parse().expect("--size");
    let count: usize = arg("--count", "100000").parse().expect("--count");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let ctx = r2r::Context::create().expect("context");
        let node = r2r::Node::create(ctx, "bag_bench_pub", "/").expect("node");
        let dn = DynNode::start(node, Arc::new(Registry::from_env()));
        let qos = r2r::QosProfile::default().reliable().keep_all();
        let p = dn.publisher(&topic, "std_msgs/msg/String", Some(qos)).await.expect("publisher");
        assert!(p.wait_for_subscribers(Duration::from_secs(30)).await, "no subscriber");
        tokio::time::sleep(Duration::from_millis(500)).await;
        // std_msgs/String CDR: encapsulation, length (with the NUL), the text, NUL.
        let text_len = size.saturating_sub(9).max(1);
        let mut cdr = vec![0u8, 1, 0, 0];
        cdr.extend_from_slice(&((text_len + 1) as u32).to_le_bytes());
        cdr.extend(std::iter::repeat_n(b'x', text_len));
        cdr.push(0);
        let t0 = Instant::now();
        // Keep all + reliable: when the writer's history is full, Fast DDS refuses the write after
        // its blocking time (RCL_RET_ERROR); wait and send the same message again (none skipped).
        let mut retries = 0u64;
        for _ in 0..count {
            while p.publish_cdr(&cdr).is_err() {
                retries += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        eprintln!("publish retries (writer history full): {retries}");
        let secs = t0.elapsed().as_secs_f64();
        println!("{{\"messages\": {count}, \"bytes\": {}, \"seconds\": {secs}}}", count * cdr.len());
        // Let the last ones be acknowledged before the publisher goes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        dn.stop();
    });
}
