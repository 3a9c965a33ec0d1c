//! Micro-benchmark of the dynamic-message layer (`./rosa bench dynmsg`): the codecs without ROS,
//! then a loopback through ROS (a DynPublisher and a raw subscription on one node, over Fast DDS):
//! latency percentiles and throughput. Figures go to stdout as one JSON object per line.
//!
//! Options: `--seconds S` (per ROS measurement, default 3), `--domain N` (default
//! ROSA_BENCH_DOMAIN, else ROS_DOMAIN_ID, else 0).

use rosa::dynmsg::{cdr, cdr_to_json, json, json_to_cdr, DynNode, Registry, SubscribeOptions};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn per_op(n: usize, f: impl FnMut()) -> f64 {
    let mut f = f;
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    t0.elapsed().as_secs_f64() / n as f64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn codecs(registry: &Registry) {
    let odom = registry.message("nav_msgs/msg/Odometry").expect("nav_msgs installed");
    let odom_json = json!({"header": {"frame_id": "odom"}, "child_frame_id": "base", "pose": {"pose": {"position": {"x": 1.0}}, "covariance": vec![0.5; 36]}, "twist": {"covariance": vec![0.25; 36]}});
    let odom_cdr = json_to_cdr(&odom, &odom_json).unwrap();
    let image = registry.message("sensor_msgs/msg/Image").expect("sensor_msgs installed");
    let pixels = vec![7u8; 1 << 20];
    let image_value = json::from_json(&image, &json!({"height": 512, "width": 2048, "encoding": "mono8", "step": 2048, "data": "" })).unwrap();
    let mut image_value = image_value;
    *image_value.get_mut("data").unwrap() = rosa::dynmsg::Value::Bytes(pixels);
    let image_cdr = cdr::encode(&image_value).unwrap();
    let n = 20_000;
    let rows = [
        ("Odometry JSON->CDR", per_op(n, || drop(json_to_cdr(&odom, &odom_json).unwrap())), odom_cdr.len()),
        ("Odometry CDR->value", per_op(n, || drop(cdr::decode(&odom, &odom_cdr).unwrap())), odom_cdr.len()),
        ("Odometry CDR->JSON", per_op(n, || drop(cdr_to_json(&odom, &odom_cdr).unwrap())), odom_cdr.len()),
        ("Image 1 MiB value->CDR", per_op(200, || drop(cdr::encode(&image_value).unwrap())), image_cdr.len()),
        ("Image 1 MiB CDR->value", per_op(200, || drop(cdr::decode(&image, &image_cdr).unwrap())), image_cdr.len()),
    ];
    for (what, secs, bytes) in rows {
        println!("{}", json!({"bench": what, "us_per_op": secs * 1e6, "ops_per_s": 1.0 / secs, "cdr_bytes": bytes, "mb_per_s": bytes as f64 / secs / 1e6}));
    }
}

async fn loopback(dn: &DynNode, seconds: f64, payload: usize) {
    let topic = format!("/rosa_bench/dynmsg_{payload}");
    let qos = r2r::QosProfile::default().keep_last(1000);
    let mut sub = dn
        .subscribe_raw(&topic, "std_msgs/msg/UInt8MultiArray", SubscribeOptions { qos: Some(qos.clone()), capacity: 100_000, ..Default::default() })
        .await
        .unwrap();
    let publisher = dn.publisher(&topic, "std_msgs/msg/UInt8MultiArray", Some(qos)).await.unwrap();
    let ty = publisher.message_type().clone();
    let mut v = ty.default_value();
    *v.path_mut("data").unwrap() = rosa::dynmsg::Value::Bytes(vec![1u8; payload]);
    let rosa::dynmsg::Value::Message(msg) = v else { unreachable!() };
    let data = cdr::encode(&msg).unwrap();
    // Matching inside one process: wait until a message goes through.
    let t0 = Instant::now();
    loop {
        publisher.publish_cdr(&data).unwrap();
        if tokio::time::timeout(Duration::from_millis(50), sub.recv()).await.is_ok() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "loopback never matched");
    }
    while tokio::time::timeout(Duration::from_millis(100), sub.recv()).await.is_ok() {}
    // Latency: one at a time.
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds / 2.0);
    while Instant::now() < end {
        let t = Instant::now();
        publisher.publish_cdr(&data).unwrap();
        if tokio::time::timeout(Duration::from_secs(1), sub.recv()).await.is_ok() {
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    lat.sort_by(f64::total_cmp);
    // Throughput: publish as fast as possible for a while, count what arrives.
    let burst = Instant::now();
    let mut sent = 0u64;
    let mut got = 0u64;
    let end = Instant::now() + Duration::from_secs_f64(seconds / 2.0);
    while Instant::now() < end {
        for _ in 0..100 {
            publisher.publish_cdr(&data).unwrap();
            sent += 1;
        }
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_micros(1), sub.recv()).await {
            got += 1;
        }
    }
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
        got += 1;
    }
    let secs = burst.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"bench": format!("ROS loopback {payload} B (publish_cdr -> subscribe_raw, one node, so Fast DDS delivers within the process)"),
               "latency_ms_p50": percentile(&lat, 0.5), "latency_ms_p95": percentile(&lat, 0.95), "samples": lat.len(),
               "sent": sent, "received": got, "msgs_per_s": got as f64 / secs, "mb_per_s": got as f64 * data.len() as f64 / secs / 1e6,
               "dropped_by_layer": sub.dropped()})
    );
}

async fn service_round_trip(dn: &DynNode, seconds: f64) {
    let mut service = dn.advertise_service("/rosa_bench/trigger", "std_srvs/srv/SetBool", 100).await.unwrap();
    let server = tokio::spawn(async move {
        while let Some(req) = service.recv().await {
            let _ = req.respond_json(&json!({"success": true, "message": "ok"}));
        }
    });
    let client = dn.client("/rosa_bench/trigger", "std_srvs/srv/SetBool").await.unwrap();
    client.wait_for_service(Duration::from_secs(10)).await.unwrap();
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        client.call_json(&json!({"data": true}), Duration::from_secs(2)).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    println!("{}", json!({"bench": "service call_json -> DynService respond_json (one node)", "latency_ms_p50": percentile(&lat, 0.5), "latency_ms_p95": percentile(&lat, 0.95), "calls": lat.len()}));
    server.abort();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let seconds: f64 = arg("--seconds").and_then(|s| s.parse().ok()).filter(|s: &f64| *s > 0.0 && *s < 3600.0).unwrap_or(3.0);
    if let Some(d) = arg("--domain").or_else(|| std::env::var("ROSA_BENCH_DOMAIN").ok()) {
        std::env::set_var("ROS_DOMAIN_ID", d);
    }
    std::env::set_var("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST");
    let registry = Arc::new(Registry::from_env());
    codecs(&registry);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ctx = r2r::Context::create().unwrap();
        let node = r2r::Node::create(ctx, "dynmsg_bench", "/rosa_bench").unwrap();
        let dn = DynNode::start(node, registry.clone());
        for payload in [64, 1 << 20] {
            loopback(&dn, seconds, payload).await;
        }
        service_round_trip(&dn, seconds / 2.0).await;
        dn.stop();
    });
}
