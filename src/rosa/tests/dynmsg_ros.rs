//! The dynamic-message layer against an independent rclpy peer (test/support/dynmsg_peer.py), for
//! types rosa is not compiled with (nav_msgs, test_msgs, std_srvs are outside IDL_PACKAGE_FILTER):
//! messages both ways with equal values and equal CDR bytes, raw subscriptions, services both
//! ways, an action goal with feedback, result and cancel, QoS matching, the graph, parameters, and
//! typed and dynamic endpoints on one node.
//!
//! ROS domain: ROS_DOMAIN_ID if set, else the last of ROSA_TEST_DOMAINS (FIRST-LAST), else one
//! derived from the process id; discovery on loopback only.

use rosa::dynmsg::{cdr, json, DynNode, GoalStatus, Registry, SubscribeOptions, Value};
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let domain = std::env::var("ROS_DOMAIN_ID").ok().filter(|d| !d.is_empty()).unwrap_or_else(|| {
            match std::env::var("ROSA_TEST_DOMAINS").ok().and_then(|s| s.split_once('-').map(|(_, l)| l.trim().to_string())) {
                Some(last) => last,
                None => (1 + std::process::id() % 60 + 40).to_string(),
            }
        });
        std::env::set_var("ROS_DOMAIN_ID", &domain);
        std::env::set_var("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST");
    });
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    next: u64,
}

impl Peer {
    fn start(name: &str) -> Peer {
        setup();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test/support/dynmsg_peer.py");
        let mut child = Command::new("python")
            .arg(script)
            .arg("--name")
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the rclpy peer (python with rclpy on PATH: run in ./rosa's environment)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Peer { child, stdin, lines: rx, next: 1 };
        let ready = p.read(Duration::from_secs(30));
        assert_eq!(ready["ready"], json!(true), "{ready}");
        p
    }

    fn read(&mut self, timeout: Duration) -> Json {
        let line = self.lines.recv_timeout(timeout).expect("the peer answers in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer said {line:?}: {e}"))
    }

    /// Send a command and wait for its answer (blocking: call through `block_in_place`).
    fn cmd(&mut self, mut c: Json) -> Json {
        let id = self.next;
        self.next += 1;
        c["id"] = json!(id);
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        let out = self.read(Duration::from_secs(60));
        assert_eq!(out["id"], json!(id));
        assert_eq!(out["ok"], json!(true), "peer command {c} failed: {out}");
        out
    }

    fn call(&mut self, c: Json) -> Json {
        tokio::task::block_in_place(|| self.cmd(c))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(name: &str) -> DynNode {
    setup();
    let ctx = r2r::Context::create().expect("rcl context");
    let node = r2r::Node::create(ctx, name, "").expect("node");
    DynNode::start(node, Arc::new(Registry::from_env()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Our JSON as the peer writes values (binary arrays as number lists).
fn plain(v: &Value) -> Json {
    match v {
        Value::Bytes(b) => json!(b),
        Value::Array(a) => Json::Array(a.iter().map(plain).collect()),
        Value::Message(m) => Json::Object(m.ty.fields.iter().zip(&m.fields).map(|(f, v)| (f.name.clone(), plain(v))).collect()),
        other => json::to_json(other),
    }
}

/// Equal bytes, padding aside (Fast DDS leaves its padding uninitialised).
fn assert_same_cdr(ours: &[u8], theirs: &[u8], mask: &[bool], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length: ours {} theirs {}", hex(ours), hex(theirs));
    for (i, ((a, b), pad)) in ours.iter().zip(theirs).zip(mask).enumerate() {
        assert!(*pad || a == b, "{what}: byte {i} differs: ours {} theirs {}", hex(ours), hex(theirs));
    }
}

async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn odometry() -> Json {
    let cov: Vec<f64> = (0..36).map(|i| f64::from(i) * 0.25).collect();
    json!({
        "header": {"stamp": {"sec": 1712, "nanosec": 345}, "frame_id": "odom"},
        "child_frame_id": "base_link",
        "pose": {"pose": {"position": {"x": 1.5, "y": -2.25, "z": 0.0}, "orientation": {"x": 0.0, "y": 0.0, "z": 0.38268343236, "w": 0.92387953251}}, "covariance": cov},
        "twist": {"twist": {"linear": {"x": 0.2, "y": 0.0, "z": 0.0}, "angular": {"x": 0.0, "y": 0.0, "z": -0.1}}, "covariance": cov},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclpy_publishes_layer_receives_equal_values_and_bytes() {
    let mut peer = Peer::start("dyn_peer_pub");
    let dn = start_node("dyn_sub");
    let topic = "/dyn_test/odom_in";
    let mut sub = dn.subscribe(topic, "nav_msgs/msg/Odometry", SubscribeOptions::default()).await.unwrap();
    let mut raw = dn.subscribe_raw(topic, "nav_msgs/msg/Odometry", SubscribeOptions::default()).await.unwrap();
    peer.call(json!({"op": "publish", "topic": topic, "type": "nav_msgs/msg/Odometry", "values": odometry(), "count": 5, "period": 0.05, "wait_subscribers": 10, "subscribers": 2}));
    let ty = dn.registry().message("nav_msgs/msg/Odometry").unwrap();
    let expected = json::from_json(&ty, &odometry()).unwrap();
    for i in 0..5 {
        let got = within(10, "a decoded Odometry", sub.recv()).await.expect("subscription open").unwrap();
        assert_eq!(got.message, expected, "message {i}");
        assert!(got.info.source_timestamp_ns > 0);
        let r = within(10, "a raw Odometry", raw.recv()).await.unwrap();
        // What arrived is what rclpy put on the wire; ours for the same values is the same bytes,
        // padding aside, and the same length.
        assert_same_cdr(&cdr::encode(&expected).unwrap(), &r.data, &cdr::padding_mask(&expected).unwrap(), "Odometry");
    }
    assert_eq!(sub.raw().dropped(), 0);
    dn.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_publishes_rclpy_receives_equal_values_and_bytes() {
    let mut peer = Peer::start("dyn_peer_sub");
    let dn = start_node("dyn_pub");
    let image: Vec<u8> = (0..(640 * 480 * 3)).map(|i| (i % 251) as u8).collect();
    let cases = vec![
        ("nav_msgs/msg/Odometry", odometry()),
        ("test_msgs/msg/BasicTypes", json!({"bool_value": true, "byte_value": 255, "char_value": 65, "float32_value": 0.1, "float64_value": -1e300, "int8_value": -128, "uint8_value": 200, "int16_value": -32768, "uint16_value": 65535, "int32_value": -7, "uint32_value": 4000000000u32, "int64_value": i64::MIN, "uint64_value": u64::MAX})),
        ("test_msgs/msg/Arrays", json!({"string_values": ["a", "", "ü"], "uint8_values": [1, 2, 3], "basic_types_values": [{"int16_value": 3}, {}, {"bool_value": true}]})),
        ("test_msgs/msg/BoundedSequences", json!({"int32_values": [1, -2], "string_values": ["x"], "defaults_values": [{}], "float64_values": [0.5]})),
        ("test_msgs/msg/UnboundedSequences", json!({"uint64_values": [1, 2, 3], "byte_values": [0, 255], "basic_types_values": [{"float64_value": 2.5}], "string_values": ["one", "two"]})),
        ("test_msgs/msg/MultiNested", json!({"unbounded_sequence_of_bounded_sequences": [{"int8_values": [1]}, {}]})),
        ("test_msgs/msg/Strings", json!({"string_value": "hello", "bounded_string_value": "short"})),
        ("test_msgs/msg/WStrings", json!({"wstring_value": "hé 😀", "unbounded_sequence_of_wstrings": ["ハロー", ""]})),
        ("test_msgs/msg/Defaults", json!({})),
        ("test_msgs/msg/Empty", json!({})),
        ("std_msgs/msg/Bool", json!({"data": true})),
        ("sensor_msgs/msg/Image", json!({"header": {"frame_id": "cam"}, "height": 480, "width": 640, "encoding": "rgb8", "step": 1920, "data": image})),
    ];
    for (i, (ty_name, values)) in cases.into_iter().enumerate() {
        let topic = format!("/dyn_test/out_{i}");
        peer.call(json!({"op": "subscribe", "topic": topic, "type": ty_name}));
        let p = dn.publisher(&topic, ty_name, None).await.unwrap();
        assert!(p.wait_for_subscribers(Duration::from_secs(10)).await, "{ty_name}: no subscriber matched");
        let msg = json::from_json(p.message_type(), &values).unwrap();
        let ours = cdr::encode(&msg).unwrap();
        p.publish(&msg).unwrap();
        let got = peer.call(json!({"op": "received", "topic": topic, "count": 1, "timeout": 10}));
        let m = &got["messages"][0];
        assert!(!m.is_null(), "{ty_name}: nothing received");
        // On the wire: our bytes (Fast DDS pads a serialized publish to a multiple of 4 bytes).
        let wire = unhex(m["raw"].as_str().unwrap());
        assert_eq!(wire.len(), ours.len().div_ceil(4) * 4, "{ty_name}: length on the wire");
        assert_eq!(&wire[..ours.len()], &ours[..], "{ty_name}: bytes on the wire");
        assert_eq!(m["values"], plain(&Value::Message(msg.clone())), "{ty_name}: values rclpy decoded");
        // rclpy's serialisation of the same values: the same bytes, padding aside, then rmw's
        // slack (its buffer is sized by an estimate).
        let theirs = unhex(m["reserialized"].as_str().unwrap());
        assert!(theirs.len() >= ours.len(), "{ty_name}: rclpy's is shorter: ours {} theirs {}", hex(&ours), hex(&theirs));
        assert_same_cdr(&ours, &theirs[..ours.len()], &cdr::padding_mask(&msg).unwrap(), ty_name);
    }
    dn.stop();
}

/// "Available" is the client's view (its request writer and response reader matched). The
/// server's response writer can match the client's reader later; rmw_fastrtps then waits 100 ms
/// for it and drops the response (seen once in CI on a loaded machine). Give discovery that time.
async fn server_matched(client: &rosa::dynmsg::DynClient) {
    client.wait_for_service(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_both_ways() {
    let mut peer = Peer::start("dyn_peer_srv");
    let dn = start_node("dyn_srv");
    // The layer calls rclpy's service (a type outside IDL_PACKAGE_FILTER).
    peer.call(json!({"op": "serve", "service": "/dyn_test/basic", "type": "test_msgs/srv/BasicTypes"}));
    let client = dn.client("/dyn_test/basic", "test_msgs/srv/BasicTypes").await.unwrap();
    server_matched(&client).await;
    let resp = client
        .call_json(&json!({"int64_value": -42, "string_value": "ping", "float64_value": 0.125, "uint8_value": 7}), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(resp["int64_value"], json!(-42));
    assert_eq!(resp["string_value"], json!("ping (peer)"));
    assert_eq!(resp["float64_value"], json!(0.125));
    let reqs = peer.call(json!({"op": "requests", "service": "/dyn_test/basic"}));
    assert_eq!(reqs["requests"][0]["uint8_value"], json!(7));
    // std_srvs too, a bad request is an error naming the field, and an absent server times out.
    peer.call(json!({"op": "serve", "service": "/dyn_test/set_bool", "type": "std_srvs/srv/SetBool", "reply": {"success": true, "message": "done"}}));
    let sb = dn.client("/dyn_test/set_bool", "std_srvs/srv/SetBool").await.unwrap();
    server_matched(&sb).await;
    assert_eq!(sb.call_json(&json!({"data": true}), Duration::from_secs(10)).await.unwrap(), json!({"success": true, "message": "done"}));
    let e = sb.call_json(&json!({"dta": true}), Duration::from_secs(1)).await.unwrap_err().to_string();
    assert!(e.contains("dta") && e.contains("has no field"), "{e}");
    let none = dn.client("/dyn_test/nobody", "std_srvs/srv/Trigger").await.unwrap();
    let t0 = Instant::now();
    assert!(none.call_json(&json!({}), Duration::from_millis(300)).await.is_err());
    assert!(t0.elapsed() < Duration::from_secs(3));

    // rclpy calls the layer's service.
    let mut service = dn.advertise_service("/dyn_test/served", "test_msgs/srv/BasicTypes", 10).await.unwrap();
    let server = tokio::spawn(async move {
        let req = within(20, "a request", service.recv()).await.unwrap();
        let mut v = req.request_json().unwrap();
        v["int32_value"] = json!(v["int32_value"].as_i64().unwrap() * 2);
        v["string_value"] = json!("served by rosa");
        req.respond_json(&v).unwrap();
        service
    });
    let out = peer.call(json!({"op": "call", "service": "/dyn_test/served", "type": "test_msgs/srv/BasicTypes", "values": {"int32_value": 21, "bool_value": true}}));
    assert_eq!(out["response"]["int32_value"], json!(42));
    assert_eq!(out["response"]["bool_value"], json!(true));
    assert_eq!(out["response"]["string_value"], json!("served by rosa"));
    drop(server.await.unwrap());
    dn.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_goal_with_feedback_result_and_cancel() {
    let mut peer = Peer::start("dyn_peer_action");
    let dn = start_node("dyn_action");
    peer.call(json!({"op": "action_server", "action": "/dyn_test/fib", "type": "test_msgs/action/Fibonacci", "period": 0.1}));
    let ac = dn.action_client("/dyn_test/fib", "test_msgs/action/Fibonacci").await.unwrap();
    ac.wait_for_server(Duration::from_secs(10)).await.unwrap();
    let mut goal = ac.send_goal_json(&json!({"order": 6}), Duration::from_secs(10)).await.unwrap();
    let mut feedback = Vec::new();
    let result = within(20, "the result", async {
        loop {
            tokio::select! {
                Some(f) = goal.feedback.recv() => feedback.push(json::message_to_json(&f)),
                r = &mut goal.result => break r.unwrap().unwrap(),
            }
        }
    })
    .await;
    assert_eq!(result.status, GoalStatus::Succeeded);
    assert_eq!(json::message_to_json(&result.result), json!({"sequence": [0, 1, 1, 2, 3, 5, 8]}));
    assert!(feedback.len() >= 3, "feedback: {feedback:?}");
    assert_eq!(feedback.last().unwrap(), &json!({"sequence": [0, 1, 1, 2, 3, 5, 8]}));

    // A long goal, cancelled.
    let mut long = ac.send_goal_json(&json!({"order": 100}), Duration::from_secs(10)).await.unwrap();
    within(10, "first feedback", long.feedback.recv()).await.unwrap();
    let c = long.cancel(Duration::from_secs(10)).await.unwrap();
    assert_eq!(c.return_code, 0);
    assert_eq!(c.goals_canceling, 1);
    let r = within(20, "the cancelled result", &mut long.result).await.unwrap().unwrap();
    assert_eq!(r.status, GoalStatus::Canceled);
    // A rejected goal.
    let e = ac.send_goal_json(&json!({"order": -1}), Duration::from_secs(10)).await.err().expect("rejected");
    assert!(e.to_string().contains("rejected"), "{e}");
    dn.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_matches_latched_and_best_effort_publishers() {
    let mut peer = Peer::start("dyn_peer_qos");
    let dn = start_node("dyn_qos");
    // Published before anyone subscribed, transient-local: a matched subscription still gets it.
    peer.call(json!({"op": "publish", "topic": "/dyn_test/latched", "type": "std_msgs/msg/String", "values": {"data": "state"}, "qos": {"durability": "transient_local", "depth": 1}}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while dn.publishers_info("/dyn_test/latched").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "publisher not discovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latched = dn.subscribe("/dyn_test/latched", "std_msgs/msg/String", SubscribeOptions::default()).await.unwrap();
    assert_eq!(latched.raw().qos().durability, r2r::qos::DurabilityPolicy::TransientLocal);
    let m = within(10, "the latched message", latched.recv_json()).await.unwrap().unwrap();
    assert_eq!(m, json!({"data": "state"}));

    // A best-effort publisher: a reliable subscription would not match it; the matched one does.
    let be = json!({"reliability": "best_effort"});
    peer.call(json!({"op": "publish", "topic": "/dyn_test/be", "type": "std_msgs/msg/String", "values": {"data": "first"}, "qos": be}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while dn.publishers_info("/dyn_test/be").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "publisher not discovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sub = dn.subscribe("/dyn_test/be", "std_msgs/msg/String", SubscribeOptions::default()).await.unwrap();
    assert_eq!(sub.raw().qos().reliability, r2r::qos::ReliabilityPolicy::BestEffort);
    peer.call(json!({"op": "publish", "topic": "/dyn_test/be", "type": "std_msgs/msg/String", "values": {"data": "again"}, "qos": be, "count": 20, "period": 0.05, "wait_subscribers": 10}));
    let m = within(10, "a best-effort message", sub.recv_json()).await.unwrap().unwrap();
    assert_eq!(m, json!({"data": "again"}));
    dn.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_made_before_its_latched_publisher_gets_the_state_once() {
    let mut peer = Peer::start("dyn_peer_late");
    let dn = start_node("dyn_late");
    // No publisher yet: the subscription starts volatile (a UI subscribing while the graph starts).
    let mut sub = dn.subscribe("/dyn_test/late_latched", "std_msgs/msg/String", SubscribeOptions::default()).await.unwrap();
    assert_eq!(sub.raw().qos().durability, r2r::qos::DurabilityPolicy::Volatile);
    // The latched publisher appears and publishes at once, before discovery has matched it with
    // the volatile subscription (or just after: then both subscriptions get it).
    peer.call(json!({"op": "publish", "topic": "/dyn_test/late_latched", "type": "std_msgs/msg/String", "values": {"data": "state"}, "qos": {"durability": "transient_local", "depth": 1}}));
    let m = within(15, "the latched state", sub.recv_json()).await.unwrap().unwrap();
    assert_eq!(m, json!({"data": "state"}));
    // Re-made with the publisher's QoS.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.raw().qos().durability != r2r::qos::DurabilityPolicy::TransientLocal {
        assert!(Instant::now() < deadline, "the subscription was not re-made transient-local");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once: the message the re-made subscription gets from the history is not delivered again.
    let again = tokio::time::timeout(Duration::from_secs(3), sub.recv_json()).await;
    assert!(again.is_err(), "delivered twice: {again:?}");
    // Live messages still arrive, once each.
    peer.call(json!({"op": "publish", "topic": "/dyn_test/late_latched", "type": "std_msgs/msg/String", "values": {"data": "next"}, "qos": {"durability": "transient_local", "depth": 1}}));
    let m = within(10, "a live message", sub.recv_json()).await.unwrap().unwrap();
    assert_eq!(m, json!({"data": "next"}));
    assert!(tokio::time::timeout(Duration::from_secs(1), sub.recv_json()).await.is_err(), "a live message delivered twice");
    dn.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_parameters_and_typed_endpoints_on_one_node() {
    let mut peer = Peer::start("dyn_peer_graph");
    let dn = start_node("dyn_graph");
    peer.call(json!({"op": "publish", "topic": "/dyn_test/g_odom", "type": "nav_msgs/msg/Odometry", "values": {}, "qos": {"durability": "transient_local"}}));
    peer.call(json!({"op": "serve", "service": "/dyn_test/g_srv", "type": "std_srvs/srv/Trigger", "reply": {"success": true}}));
    peer.call(json!({"op": "action_server", "action": "/dyn_test/g_fib", "type": "test_msgs/action/Fibonacci"}));
    let deadline = Instant::now() + Duration::from_secs(15);
    let graph = loop {
        let g = dn.graph().await.unwrap();
        if g.nodes.iter().any(|n| n == "/dyn_peer_graph") && g.topics.contains_key("/dyn_test/g_odom") && g.actions.contains_key("/dyn_test/g_fib") && g.services.contains_key("/dyn_test/g_srv") {
            break g;
        }
        assert!(Instant::now() < deadline, "graph incomplete: {g:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(graph.topics["/dyn_test/g_odom"], ["nav_msgs/msg/Odometry"]);
    assert_eq!(graph.services["/dyn_test/g_srv"], ["std_srvs/srv/Trigger"]);
    assert_eq!(graph.actions["/dyn_test/g_fib"], ["test_msgs/action/Fibonacci"]);
    assert!(rosa::dynmsg::is_hidden("/dyn_test/g_fib/_action/feedback"));
    let pubs = dn.publishers_info("/dyn_test/g_odom").await.unwrap();
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0].node_name, "dyn_peer_graph");
    assert_eq!(pubs[0].qos_profile.durability, r2r::qos::DurabilityPolicy::TransientLocal);
    let details = dn.node_details("dyn_peer_graph", "/").await.unwrap();
    assert!(details.publishers.contains_key("/dyn_test/g_odom"), "{details:?}");
    assert!(details.services.contains_key("/dyn_test/g_srv"));

    // Parameters of the peer, through its parameter services.
    let t = Duration::from_secs(10);
    let names = dn.list_parameters("/dyn_peer_graph", t).await.unwrap();
    assert!(names.contains(&"speed".to_string()) && names.contains(&"label".to_string()), "{names:?}");
    let got = dn.get_parameters("/dyn_peer_graph", &["speed".into(), "flags".into()], t).await.unwrap();
    assert_eq!(got, vec![("speed".into(), Some(json!(0.5))), ("flags".into(), Some(json!([true, false])))]);
    let e = dn.get_parameters("/dyn_peer_graph", &["speed".into(), "nope".into()], t).await.unwrap_err().to_string();
    assert!(e.contains("declared"), "{e}");
    let set = dn.set_parameters("/dyn_peer_graph", &[("speed".into(), json!(1.25)), ("label".into(), json!(3))], t).await.unwrap();
    assert_eq!(set[0], Ok(()));
    assert!(set[1].is_err(), "an int for a string parameter is refused by rclpy: {set:?}");
    assert_eq!(peer.call(json!({"op": "get_param", "name": "speed"}))["value"], json!(1.25));

    // A typed r2r subscription and a dynamic one on the same node and spin thread.
    let mut typed = dn
        .with_node(|node| node.subscribe::<r2r::std_msgs::msg::String>("/dyn_test/both", r2r::QosProfile::default()))
        .await
        .unwrap()
        .unwrap();
    let mut dynamic = dn.subscribe("/dyn_test/both", "std_msgs/msg/String", SubscribeOptions { qos: Some(r2r::QosProfile::default()), ..Default::default() }).await.unwrap();
    peer.call(json!({"op": "publish", "topic": "/dyn_test/both", "type": "std_msgs/msg/String", "values": {"data": "to both"}, "count": 10, "period": 0.05, "wait_subscribers": 10, "subscribers": 2}));
    use futures::StreamExt;
    let a = within(10, "typed", typed.next()).await.unwrap();
    assert_eq!(a.data, "to both");
    assert_eq!(within(10, "dynamic", dynamic.recv_json()).await.unwrap().unwrap(), json!({"data": "to both"}));
    dn.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_subscription_leaves_the_graph() {
    let dn = start_node("dyn_drop");
    let sub = dn.subscribe_raw("/dyn_test/dropme", "nav_msgs/msg/Odometry", SubscribeOptions::default()).await.unwrap();
    let count = |dn: DynNode| async move { dn.subscriptions_info("/dyn_test/dropme").await.unwrap().len() };
    assert_eq!(count(dn.clone()).await, 1);
    drop(sub);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(dn.clone()).await != 0 {
        assert!(Instant::now() < deadline, "the subscription is still in the graph");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Unknown types and bad names are errors, not panics.
    assert!(dn.subscribe_raw("/x", "nope_msgs/msg/Nothing", SubscribeOptions::default()).await.is_err());
    assert!(dn.publisher("bad topic name!", "std_msgs/msg/String", None).await.is_err());
    assert!(dn.publisher("/x", "std_msgs/msg/String\0", None).await.is_err());
    dn.stop();
}

#[test]
fn ros2msg_of_installed_types() {
    let r = Registry::from_env();
    let text = r.ros2msg("nav_msgs/msg/Odometry").unwrap();
    let sep = format!("\n{}\n", "=".repeat(80));
    let parts: Vec<&str> = text.split(&sep).collect();
    let names: Vec<&str> = parts[1..].iter().map(|p| p.lines().next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "MSG: geometry_msgs/PoseWithCovariance",
            "MSG: geometry_msgs/Pose",
            "MSG: geometry_msgs/Point",
            "MSG: geometry_msgs/Quaternion",
            "MSG: geometry_msgs/TwistWithCovariance",
            "MSG: geometry_msgs/Twist",
            "MSG: geometry_msgs/Vector3",
            "MSG: std_msgs/Header",
            "MSG: builtin_interfaces/Time",
        ]
    );
    // Each part is the file as installed.
    let prefix = r.package_prefix("geometry_msgs").unwrap();
    let pose = std::fs::read_to_string(prefix.join("share/geometry_msgs/msg/Pose.msg")).unwrap();
    assert!(text.contains(&format!("MSG: geometry_msgs/Pose\n{pose}")), "{text}");
    assert!(r.type_hash("nav_msgs/msg/Odometry").unwrap().starts_with("RIHS01_"));
    assert!(r.type_hash("test_msgs/action/Fibonacci_FeedbackMessage").unwrap().starts_with("RIHS01_"));
    assert!(r.installed().iter().any(|t| t == "test_msgs/action/Fibonacci"));
}
