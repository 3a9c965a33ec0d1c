//! The r2r-facing part: one node, spun in one thread, serving typed (r2r's own) and dynamic
//! endpoints alike — publish, subscribe (decoded or raw CDR), call and serve services, send and
//! cancel action goals, read the graph and other nodes' parameters — for any installed type.
//!
//! Threading: [`DynNode::start`] moves the `r2r::Node` into a thread that calls `spin_once` and,
//! between spins, runs the closures sent to it ([`DynNode::with_node`]): creating and destroying
//! endpoints and graph queries go through there. Sending one wakes the thread's `rcl_wait` (a
//! guard condition, r2r patch 0500), so it runs at once instead of after the spin period
//! (`spin_period`, 10 ms by default, which only paces r2r's polled futures). Publishing, service
//! requests and responses do not go through the thread: they go straight to rcl from the calling
//! thread. Subscription callbacks run in the spin thread and only
//! hand the CDR bytes to a bounded channel; decoding happens in the receiving task.

use super::cdr;
use super::json::{from_json, message_to_json};
use super::types::{ActionType, MessageType, Registry, ServiceType, TypeName};
use super::typesupport;
use super::value::{MessageValue, Value};
use super::DynError;
use futures::Stream;
use r2r::qos::{DurabilityPolicy, HistoryPolicy, ReliabilityPolicy};
use r2r::{ClientSerialized, MessageInfo, QosProfile, SerializedMessage, ServiceRequestSerialized, TopicEndpointInfo};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

type Command = Box<dyn FnOnce(&mut r2r::Node) + Send>;

struct Inner {
    commands: std_mpsc::Sender<Command>,
    waker: Option<r2r::SpinWaker>,
    registry: Arc<Registry>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    clients: Mutex<HashMap<(String, String), DynClient>>,
    param_clients: Mutex<HashMap<String, ParamClients>>,
}

impl Inner {
    fn send(&self, cmd: Command) -> Result<(), DynError> {
        self.commands.send(cmd).map_err(|_| DynError::Stopped)?;
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    /// Wake the spin thread of `inner` (if it is still there): r2r polls the futures of
    /// `is_available` and of matched subscribers once per spin, so a new one is looked at now
    /// instead of after the spin period.
    fn wake_weak(inner: &Weak<Inner>) {
        if let Some(i) = inner.upgrade() {
            i.wake();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
        if let Some(t) = self.thread.get_mut().ok().and_then(Option::take) {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// A handle to the node and its spin thread (cheap to clone, `Send + Sync`). The thread stops
/// when [`DynNode::stop`] is called or the last handle is dropped; endpoints are destroyed with
/// the node, in that thread.
#[derive(Clone)]
pub struct DynNode {
    inner: Arc<Inner>,
}

impl DynNode {
    /// Spin `node` in its own thread (period 10 ms).
    pub fn start(node: r2r::Node, registry: Arc<Registry>) -> Self {
        Self::start_with_period(node, registry, Duration::from_millis(10))
    }

    pub fn start_with_period(mut node: r2r::Node, registry: Arc<Registry>, spin_period: Duration) -> Self {
        let (tx, rx) = std_mpsc::channel::<Command>();
        let waker = match node.spin_waker() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("no guard condition to wake the spin thread ({e}): node operations wait up to {spin_period:?}");
                None
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ros-spin".into())
            .spawn(move || {
                // rcl_wait returns at once on an empty wait set: a timer keeps it from being empty,
                // so a node without endpoints (yet) sleeps between spins instead of busy-looping.
                let _keepalive = node.create_wall_timer(Duration::from_secs(3600));
                while !flag.load(Ordering::Relaxed) {
                    while let Ok(cmd) = rx.try_recv() {
                        cmd(&mut node);
                    }
                    node.spin_once(spin_period);
                }
                // Endpoints and node are dropped here, in the thread that owned them.
            })
            .expect("spawn the spin thread");
        Self {
            inner: Arc::new(Inner {
                commands: tx,
                waker,
                registry,
                stop,
                thread: Mutex::new(Some(thread)),
                clients: Mutex::default(),
                param_clients: Mutex::default(),
            }),
        }
    }

    /// Stop spinning and drop the node (its endpoints with it); waits for the thread.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.wake();
        let t = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    fn weak(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Run `f` on the node in the spin thread (between two spins) and return its result: for
    /// typed r2r endpoints (`node.subscribe::<T>(…)`) and anything else that needs the node.
    pub async fn with_node<R, F>(&self, f: F) -> Result<R, DynError>
    where
        R: Send + 'static,
        F: FnOnce(&mut r2r::Node) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.inner.send(Box::new(move |node: &mut r2r::Node| {
            let _ = tx.send(f(node));
        }))?;
        rx.await.map_err(|_| DynError::Stopped)
    }

    /// Like [`DynNode::with_node`] without waiting (for destructors).
    fn post(inner: &Weak<Inner>, f: impl FnOnce(&mut r2r::Node) + Send + 'static) {
        if let Some(inner) = inner.upgrade() {
            let _ = inner.send(Box::new(f));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Topics
    // -----------------------------------------------------------------------------------------

    /// A publisher of `type_name` on `topic` (QoS: reliable, volatile, depth 10 unless given).
    /// The publisher is destroyed when its last clone is dropped.
    pub async fn publisher(&self, topic: &str, type_name: &str, qos: Option<QosProfile>) -> Result<DynPublisher, DynError> {
        let tn = TypeName::parse(type_name)?;
        let ty = self.inner.registry.message(type_name)?;
        let ts = typesupport::message(&self.inner.registry, &tn)?;
        let qos = qos.unwrap_or(QosProfile::default());
        let (topic_c, name) = (topic.to_string(), tn.to_string());
        let publisher = self
            .with_node(move |node| unsafe { node.create_publisher_serialized(&topic_c, &name, &ts, qos) })
            .await??;
        Ok(DynPublisher {
            topic: topic.to_string(),
            ty,
            guard: Arc::new(PublisherGuard { node: self.weak(), publisher }),
        })
    }

    /// Subscribe to raw CDR (with rmw's message info). QoS: as `options` say, by default matched to
    /// the topic's publishers (see [`match_publishers`]). With no publisher known yet, the
    /// subscription starts reliable and volatile and is re-made with the matched QoS once
    /// publishers appear (see [`rematch_when_published`]): a transient-local publisher discovered a
    /// moment after the subscription still hands over its latched state.
    pub async fn subscribe_raw(&self, topic: &str, type_name: &str, options: SubscribeOptions) -> Result<RawSubscription, DynError> {
        let (qos, rematch) = match options.qos {
            Some(q) => (q, false),
            None => {
                let publishers = self.publishers_info(topic).await.unwrap_or_default();
                (match_publishers(&publishers, options.depth), publishers.is_empty())
            }
        };
        let (tx, rx) = mpsc::channel(options.capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Delivered { on: rematch, last: HashMap::new() }));
        let forward = Forward { tx, dropped: dropped.clone(), seen };
        let handle = self.subscribe_raw_with(topic, type_name, qos.clone(), forward.callback()).await?;
        let ty = handle.ty.clone();
        let current = Arc::new(Mutex::new(Current { guard: handle.guard, qos }));
        if rematch {
            let rm = Rematch { node: self.weak(), topic: topic.to_string(), type_name: type_name.to_string(), depth: options.depth, forward };
            tokio::spawn(rematch_when_published(rm, Arc::downgrade(&current)));
        }
        Ok(RawSubscription { topic: topic.to_string(), ty, rx, dropped, current })
    }

    /// Subscribe to raw CDR with a callback of one's own, run in the spin thread for each message
    /// (it must not block; returning `false` ends the subscription). For consumers that fan many
    /// topics into one queue of their own (the bag recorder). Dropping the handle destroys the
    /// subscription.
    pub async fn subscribe_raw_with(
        &self, topic: &str, type_name: &str, qos: QosProfile, callback: Box<dyn FnMut(SerializedMessage) -> bool + Send>,
    ) -> Result<RawCallbackSubscription, DynError> {
        let tn = TypeName::parse(type_name)?;
        let ty = self.inner.registry.message(type_name)?;
        let ts = typesupport::message(&self.inner.registry, &tn)?;
        let topic_c = topic.to_string();
        let id = self
            .with_node(move |node| unsafe { node.subscribe_serialized(&topic_c, &ts, qos, callback) })
            .await??;
        Ok(RawCallbackSubscription { ty, guard: SubscriptionGuard { node: self.weak(), id } })
    }

    /// Subscribe and decode each message (in the receiving task).
    pub async fn subscribe(&self, topic: &str, type_name: &str, options: SubscribeOptions) -> Result<Subscription, DynError> {
        Ok(Subscription { raw: self.subscribe_raw(topic, type_name, options).await? })
    }

    /// The publishers of a topic with their QoS.
    pub async fn publishers_info(&self, topic: &str) -> Result<Vec<TopicEndpointInfo>, DynError> {
        let t = topic.to_string();
        Ok(self.with_node(move |node| node.get_publishers_info_by_topic(&t, false)).await??)
    }

    /// The subscriptions of a topic with their QoS.
    pub async fn subscriptions_info(&self, topic: &str) -> Result<Vec<TopicEndpointInfo>, DynError> {
        let t = topic.to_string();
        Ok(self.with_node(move |node| node.get_subscriptions_info_by_topic(&t, false)).await??)
    }

    // -----------------------------------------------------------------------------------------
    // Services
    // -----------------------------------------------------------------------------------------

    /// A client of `service` (`pkg/srv/S`), shared by every caller of the same service and type.
    pub async fn client(&self, service: &str, type_name: &str) -> Result<DynClient, DynError> {
        let key = (service.to_string(), type_name.to_string());
        if let Some(c) = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let tn = TypeName::parse(type_name)?;
        let ty = self.inner.registry.service(type_name)?;
        let ts = typesupport::service(&self.inner.registry, &tn)?;
        let name = service.to_string();
        let client = self
            .with_node(move |node| unsafe { node.create_client_serialized(&name, &ts, QosProfile::services_default()) })
            .await??;
        let c = DynClient { service: service.to_string(), ty, client, seen_server: Arc::new(AtomicBool::new(false)), node: self.weak() };
        Ok(self.inner.clients.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(c).clone())
    }

    /// Serve `service` (`pkg/srv/S`): requests arrive on the returned stream; answer each with
    /// one of its `respond` methods. The service is destroyed when the stream is dropped.
    pub async fn advertise_service(&self, service: &str, type_name: &str, capacity: usize) -> Result<DynService, DynError> {
        let tn = TypeName::parse(type_name)?;
        let ty = self.inner.registry.service(type_name)?;
        let ts = typesupport::service(&self.inner.registry, &tn)?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let name = service.to_string();
        let callback = Box::new(move |req: ServiceRequestSerialized| {
            if let Err(e) = tx.try_send(req) {
                tracing::warn!("service {name}: request dropped ({e})");
            }
        });
        let name = service.to_string();
        let id = self
            .with_node(move |node| unsafe { node.create_service_serialized(&name, &ts, QosProfile::services_default(), callback) })
            .await??;
        Ok(DynService { name: service.to_string(), ty, rx, node: self.weak(), id })
    }

    // -----------------------------------------------------------------------------------------
    // Actions
    // -----------------------------------------------------------------------------------------

    /// An action client of `action` (`pkg/action/A`): its goal, cancel and result services and
    /// its feedback and status topics (composed from the dynamic endpoints above, as rcl_action
    /// composes them, so it works for any installed action type).
    pub async fn action_client(&self, action: &str, type_name: &str) -> Result<DynActionClient, DynError> {
        let ty = self.inner.registry.action(type_name)?;
        let a = ty.name.to_string();
        let send_goal = self.client(&format!("{action}/_action/send_goal"), &format!("{a}_SendGoal")).await?;
        let get_result = self.client(&format!("{action}/_action/get_result"), &format!("{a}_GetResult")).await?;
        let cancel = self.client(&format!("{action}/_action/cancel_goal"), "action_msgs/srv/CancelGoal").await?;
        let goals: Goals = Arc::default();
        let feedback = self
            .subscribe(
                &format!("{action}/_action/feedback"),
                &format!("{a}_FeedbackMessage"),
                SubscribeOptions { qos: Some(QosProfile::default()), ..Default::default() },
            )
            .await?;
        let status_qos = QosProfile::default().transient_local().keep_last(1);
        let status = self
            .subscribe(&format!("{action}/_action/status"), "action_msgs/msg/GoalStatusArray", SubscribeOptions { qos: Some(status_qos), ..Default::default() })
            .await?;
        let tasks = vec![
            tokio::spawn(route_feedback(feedback, goals.clone())),
            tokio::spawn(route_status(status, goals.clone())),
        ];
        Ok(DynActionClient {
            inner: Arc::new(ActionInner { name: action.to_string(), ty, send_goal, get_result, cancel, goals, tasks }),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Graph and parameters
    // -----------------------------------------------------------------------------------------

    /// Nodes, topics, services and actions now in the graph.
    pub async fn graph(&self) -> Result<Graph, DynError> {
        let (nodes, topics, services) = self
            .with_node(|node| -> Result<_, r2r::Error> {
                Ok((node.get_node_names()?, node.get_topic_names_and_types_all()?, node.get_service_names_and_types()?))
            })
            .await??;
        Ok(Graph::new(nodes, topics, services))
    }

    /// The topics (hidden ones too) and their types: one graph query, cheaper than [`DynNode::graph`].
    pub async fn topic_types(&self) -> Result<BTreeMap<String, Vec<String>>, DynError> {
        Ok(self.with_node(|node| node.get_topic_names_and_types_all()).await??.into_iter().collect())
    }

    /// The services and their types: one graph query.
    pub async fn service_types(&self) -> Result<BTreeMap<String, Vec<String>>, DynError> {
        Ok(self.with_node(|node| node.get_service_names_and_types()).await??.into_iter().collect())
    }

    /// One node's publishers, subscriptions, services and clients.
    pub async fn node_details(&self, name: &str, namespace: &str) -> Result<NodeDetails, DynError> {
        let (n, ns) = (name.to_string(), namespace.to_string());
        Ok(self
            .with_node(move |node| -> Result<_, r2r::Error> {
                use r2r::NodeEndpoints as E;
                let get = |w| node.get_node_endpoint_names_and_types(w, &n, &ns).map(|m| m.into_iter().collect());
                Ok(NodeDetails { publishers: get(E::Publishers)?, subscribers: get(E::Subscribers)?, services: get(E::Services)?, clients: get(E::Clients)? })
            })
            .await??)
    }

    async fn params(&self, node_name: &str) -> Result<ParamClients, DynError> {
        if let Some(p) = self.inner.param_clients.lock().unwrap_or_else(|e| e.into_inner()).get(node_name) {
            return Ok(p.clone());
        }
        let n = node_name.trim_end_matches('/').to_string();
        let p = self
            .with_node(move |node| -> Result<ParamClients, r2r::Error> {
                let q = QosProfile::services_default();
                Ok(ParamClients {
                    list: Arc::new(node.create_client(&format!("{n}/list_parameters"), q.clone())?),
                    get: Arc::new(node.create_client(&format!("{n}/get_parameters"), q.clone())?),
                    set: Arc::new(node.create_client(&format!("{n}/set_parameters"), q)?),
                })
            })
            .await??;
        Ok(self.inner.param_clients.lock().unwrap_or_else(|e| e.into_inner()).entry(node_name.to_string()).or_insert(p).clone())
    }

    /// The names of a node's parameters (`node_name` fully qualified: `/ns/name`).
    pub async fn list_parameters(&self, node_name: &str, timeout: Duration) -> Result<Vec<String>, DynError> {
        use r2r::rcl_interfaces::srv::ListParameters;
        let p = self.params(node_name).await?;
        let req = ListParameters::Request { prefixes: vec![], depth: ListParameters::Request::DEPTH_RECURSIVE as u64 };
        let resp = typed_call(&self.weak(), &p.list, &req, timeout, &format!("{node_name}/list_parameters")).await?;
        Ok(resp.result.names)
    }

    /// Parameter values as JSON (`None` for a parameter that is not set).
    pub async fn get_parameters(&self, node_name: &str, names: &[String], timeout: Duration) -> Result<Vec<(String, Option<Json>)>, DynError> {
        use r2r::rcl_interfaces::srv::GetParameters;
        let p = self.params(node_name).await?;
        let req = GetParameters::Request { names: names.to_vec() };
        let resp = typed_call(&self.weak(), &p.get, &req, timeout, &format!("{node_name}/get_parameters")).await?;
        if resp.values.len() != names.len() {
            // rclpy answers with no values at all when one of the names is not declared.
            return Err(DynError::InvalidArgument(format!(
                "{node_name} returned {} values for {} names (is each of {} declared?)",
                resp.values.len(),
                names.len(),
                names.join(", ")
            )));
        }
        Ok(names.iter().cloned().zip(resp.values.iter().map(parameter_to_json)).collect())
    }

    /// Set parameters from JSON values; one result per parameter (the node's reason when refused).
    pub async fn set_parameters(&self, node_name: &str, values: &[(String, Json)], timeout: Duration) -> Result<Vec<Result<(), String>>, DynError> {
        use r2r::rcl_interfaces::msg::Parameter;
        use r2r::rcl_interfaces::srv::SetParameters;
        let p = self.params(node_name).await?;
        let mut parameters = Vec::new();
        for (name, v) in values {
            let value = parameter_from_json(v).ok_or_else(|| DynError::InvalidArgument(format!("parameter {name}: {v} is not a parameter value (bool, integer, number, string or an array of one of them)")))?;
            parameters.push(Parameter { name: name.clone(), value });
        }
        let req = SetParameters::Request { parameters };
        let resp = typed_call(&self.weak(), &p.set, &req, timeout, &format!("{node_name}/set_parameters")).await?;
        Ok(resp.results.into_iter().map(|r| if r.successful { Ok(()) } else { Err(r.reason) }).collect())
    }
}

// ---------------------------------------------------------------------------------------------
// QoS
// ---------------------------------------------------------------------------------------------

/// How a subscription is made.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// `None`: matched to the publishers in the graph when subscribing ([`match_publishers`]).
    pub qos: Option<QosProfile>,
    /// History depth when the QoS is matched.
    pub depth: usize,
    /// Messages waiting for the receiver beyond this are dropped (and counted).
    pub capacity: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self { qos: None, depth: 100, capacity: 1000 }
    }
}

/// A QoS that matches every publisher of a topic and keeps what they offer, as rosbag2 adapts
/// its requests: reliable unless one publisher is best-effort (a reliable reader does not match a
/// best-effort writer), transient-local only if every publisher is (a transient-local reader does
/// not match a volatile writer), so latched state reaches a late subscriber. With no publisher
/// yet: reliable and volatile.
pub fn match_publishers(publishers: &[TopicEndpointInfo], depth: usize) -> QosProfile {
    let reliable = publishers.iter().all(|p| p.qos_profile.reliability != ReliabilityPolicy::BestEffort);
    let transient = !publishers.is_empty() && publishers.iter().all(|p| p.qos_profile.durability == DurabilityPolicy::TransientLocal);
    let mut q = QosProfile::default().keep_last(depth.max(1));
    q.history = HistoryPolicy::KeepLast;
    q = if reliable { q.reliable() } else { q.best_effort() };
    if transient {
        q.transient_local()
    } else {
        q.volatile()
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------------------------

struct PublisherGuard {
    node: Weak<Inner>,
    publisher: r2r::PublisherUntyped,
}

// SAFETY: r2r's `PublisherUntyped` is `Send` but not `Sync` (it holds a `Weak` to the rcl
// publisher). Shared use only calls `&self` methods that go to rcl: `rcl_publish_serialized_message`
// and the matched-subscription count, which rcl documents as thread-safe for one publisher
// (the rmw's publish is thread-safe, Fast DDS's is); the publisher is destroyed only in the spin
// thread, after the last clone is gone. So a `DynPublisher` can live in a task that moves between
// tokio's threads (rosa_web keeps one per client topic).
unsafe impl Sync for PublisherGuard {}

impl Drop for PublisherGuard {
    fn drop(&mut self) {
        let p = self.publisher.clone();
        DynNode::post(&self.node, move |node| node.destroy_publisher_untyped(p));
    }
}

/// A publisher for any type: publish CDR, a [`MessageValue`] or JSON, from any thread.
#[derive(Clone)]
pub struct DynPublisher {
    topic: String,
    ty: Arc<MessageType>,
    guard: Arc<PublisherGuard>,
}

impl DynPublisher {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn message_type(&self) -> &Arc<MessageType> {
        &self.ty
    }

    /// Publish CDR bytes (with the encapsulation header) as they are.
    pub fn publish_cdr(&self, data: &[u8]) -> Result<(), DynError> {
        Ok(self.guard.publisher.publish_raw(data)?)
    }

    pub fn publish(&self, msg: &MessageValue) -> Result<(), DynError> {
        if msg.ty.name != self.ty.name {
            return Err(DynError::InvalidArgument(format!("a {} for a publisher of {}", msg.ty.name, self.ty.name)));
        }
        self.publish_cdr(&cdr::encode(msg)?)
    }

    /// Publish a message given as JSON (rosbridge's conventions; fields left out get defaults).
    pub fn publish_json(&self, msg: &Json) -> Result<(), DynError> {
        self.publish(&from_json(&self.ty, msg)?)
    }

    /// Subscriptions in other processes matched to this publisher.
    pub fn subscription_count(&self) -> Result<usize, DynError> {
        Ok(self.guard.publisher.get_inter_process_subscription_count()?)
    }

    /// Wait until a subscription in another process is matched (false on timeout).
    pub async fn wait_for_subscribers(&self, timeout: Duration) -> bool {
        let Ok(fut) = self.guard.publisher.wait_for_inter_process_subscribers() else { return false };
        Inner::wake_weak(&self.guard.node);
        matches!(tokio::time::timeout(timeout, fut).await, Ok(Ok(())))
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

struct SubscriptionGuard {
    node: Weak<Inner>,
    id: r2r::SubscriptionId,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let id = self.id;
        DynNode::post(&self.node, move |node| {
            node.destroy_subscription(id);
        });
    }
}

/// A subscription made with [`DynNode::subscribe_raw_with`] (destroyed when dropped).
pub struct RawCallbackSubscription {
    ty: Arc<MessageType>,
    guard: SubscriptionGuard,
}

impl RawCallbackSubscription {
    pub fn message_type(&self) -> &Arc<MessageType> {
        &self.ty
    }

    pub fn id(&self) -> r2r::SubscriptionId {
        self.guard.id
    }
}

/// Raw CDR messages of a topic, as they came (a `Stream`, or [`RawSubscription::recv`]). Dropping
/// it destroys the subscription.
pub struct RawSubscription {
    topic: String,
    ty: Arc<MessageType>,
    rx: mpsc::Receiver<SerializedMessage>,
    dropped: Arc<AtomicU64>,
    /// Swapped when the subscription is re-made with its publishers' QoS.
    current: Arc<Mutex<Current>>,
}

struct Current {
    guard: SubscriptionGuard,
    qos: QosProfile,
}

/// What a [`RawSubscription`]'s callbacks share: its channel, its drop counter, and while a
/// re-match may replay a publisher's history, the last publication sequence number delivered
/// from each publisher (so a message both subscriptions get is delivered once).
#[derive(Clone)]
struct Forward {
    tx: mpsc::Sender<SerializedMessage>,
    dropped: Arc<AtomicU64>,
    seen: Arc<Mutex<Delivered>>,
}

struct Delivered {
    on: bool,
    last: HashMap<[u8; 16], u64>,
}

impl Delivered {
    /// Whether `info`'s message is new (always, once deduplication is off or when the middleware
    /// gives no sequence number).
    fn first_time(&mut self, info: &MessageInfo) -> bool {
        if !self.on || info.publication_sequence_number == 0 {
            return true;
        }
        let last = self.last.entry(info.publisher_gid).or_insert(0);
        if info.publication_sequence_number <= *last {
            return false;
        }
        *last = info.publication_sequence_number;
        true
    }
}

impl Forward {
    fn callback(&self) -> Box<dyn FnMut(SerializedMessage) -> bool + Send> {
        let f = self.clone();
        Box::new(move |m: SerializedMessage| {
            if !f.seen.lock().map(|mut d| d.first_time(&m.info)).unwrap_or(true) {
                return true;
            }
            match f.tx.try_send(m) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    f.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        })
    }
}

struct Rematch {
    node: Weak<Inner>,
    topic: String,
    type_name: String,
    depth: usize,
    forward: Forward,
}

/// How long both subscriptions' messages are deduplicated after a re-match: the new one gets the
/// publisher's history when it matches, within discovery's time.
const REMATCH_DEDUP: Duration = Duration::from_secs(5);

/// For a subscription made before any publisher was known: look for publishers (every 50 ms at
/// first, backing off to 2 s) until there are some, then, if their QoS calls for another one
/// (transient-local, or best-effort), make a new subscription with it feeding the same channel and
/// drop the old one. Ends when the subscription is dropped or the node stops.
async fn rematch_when_published(rm: Rematch, current: Weak<Mutex<Current>>) {
    let mut wait = Duration::from_millis(50);
    let publishers = loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        let (Some(inner), true) = (rm.node.upgrade(), current.strong_count() > 0) else { return };
        let dn = DynNode { inner };
        match dn.publishers_info(&rm.topic).await {
            Ok(p) if !p.is_empty() => break p,
            Ok(_) => continue,
            Err(_) => return,
        }
    };
    let qos = match_publishers(&publishers, rm.depth);
    let Some(had) = current.upgrade().map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).qos.clone()) else { return };
    if qos.durability != had.durability || qos.reliability != had.reliability {
        let Some(inner) = rm.node.upgrade() else { return };
        let dn = DynNode { inner };
        match dn.subscribe_raw_with(&rm.topic, &rm.type_name, qos.clone(), rm.forward.callback()).await {
            Ok(new) => match current.upgrade() {
                Some(c) => {
                    tracing::debug!(topic = %rm.topic, durability = ?qos.durability, reliability = ?qos.reliability, "subscription re-made with its publishers' QoS");
                    // The old subscription is destroyed when its guard drops.
                    let _old = std::mem::replace(&mut *c.lock().unwrap_or_else(|e| e.into_inner()), Current { guard: new.guard, qos });
                }
                None => return, // dropped meanwhile: `new` goes with it
            },
            Err(e) => tracing::warn!(topic = %rm.topic, "cannot re-subscribe with the publishers' QoS: {e}"),
        }
        tokio::time::sleep(REMATCH_DEDUP).await;
    }
    if let Ok(mut d) = rm.forward.seen.lock() {
        d.on = false;
        d.last = HashMap::new();
    }
}

impl RawSubscription {
    pub async fn recv(&mut self) -> Option<SerializedMessage> {
        self.rx.recv().await
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn message_type(&self) -> &Arc<MessageType> {
        &self.ty
    }

    /// The subscription's QoS now: as made, or its publishers' once it was re-made with theirs
    /// (see [`DynNode::subscribe_raw`]).
    pub fn qos(&self) -> QosProfile {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).qos.clone()
    }

    /// Messages dropped because the receiver was `capacity` behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn id(&self) -> r2r::SubscriptionId {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).guard.id
    }
}

impl Stream for RawSubscription {
    type Item = SerializedMessage;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Decoded messages of a topic.
pub struct Subscription {
    raw: RawSubscription,
}

/// One decoded message with rmw's message info.
#[derive(Clone, Debug)]
pub struct Received {
    pub message: MessageValue,
    pub info: MessageInfo,
    /// Its size on the wire.
    pub cdr_len: usize,
}

impl Subscription {
    /// The next message; `Some(Err(..))` for one that did not decode (the subscription goes on).
    pub async fn recv(&mut self) -> Option<Result<Received, DynError>> {
        let m = self.raw.recv().await?;
        Some(
            cdr::decode(&self.raw.ty, &m.data)
                .map(|message| Received { message, info: m.info, cdr_len: m.data.len() })
                .map_err(DynError::from),
        )
    }

    /// The next message as JSON.
    pub async fn recv_json(&mut self) -> Option<Result<Json, DynError>> {
        Some(self.recv().await?.map(|r| message_to_json(&r.message)))
    }

    pub fn raw(&self) -> &RawSubscription {
        &self.raw
    }
}

// ---------------------------------------------------------------------------------------------
// Service client and server
// ---------------------------------------------------------------------------------------------

/// A service client for any type (cheap to clone).
#[derive(Clone)]
pub struct DynClient {
    service: String,
    ty: Arc<ServiceType>,
    client: ClientSerialized,
    /// A server was seen: later calls do not wait for the graph check.
    seen_server: Arc<AtomicBool>,
    node: Weak<Inner>,
}

impl DynClient {
    pub fn service_type(&self) -> &Arc<ServiceType> {
        &self.ty
    }

    /// Wait until the service has a server (an error on timeout).
    pub async fn wait_for_service(&self, timeout: Duration) -> Result<(), DynError> {
        let fut = r2r::Node::is_available(&self.client)?;
        Inner::wake_weak(&self.node);
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(())) => {
                self.seen_server.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(DynError::NotAvailable(format!("service {} has no server (waited {timeout:?})", self.service))),
        }
    }

    /// Call with a CDR request; the CDR response. `timeout` covers waiting for the server too.
    pub async fn call_cdr(&self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, DynError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Once a server has been seen, a request goes out at once (if that server is gone, the
        // call times out as it would have anyway).
        if !self.seen_server.load(Ordering::Relaxed) {
            self.wait_for_service(timeout).await?;
        }
        let fut = self.client.request(request)?;
        match tokio::time::timeout_at(deadline, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                self.client.forget_pending();
                Err(DynError::Timeout { what: format!("the response of {}", self.service), after: timeout })
            }
        }
    }

    pub async fn call(&self, request: &MessageValue, timeout: Duration) -> Result<MessageValue, DynError> {
        if request.ty.name != self.ty.request.name {
            return Err(DynError::InvalidArgument(format!("a {} for a {} request", request.ty.name, self.ty.name)));
        }
        let resp = self.call_cdr(&cdr::encode(request)?, timeout).await?;
        Ok(cdr::decode(&self.ty.response, &resp)?)
    }

    /// Call with a JSON request (fields left out get defaults); the JSON response.
    pub async fn call_json(&self, request: &Json, timeout: Duration) -> Result<Json, DynError> {
        let req = from_json(&self.ty.request, request)?;
        Ok(message_to_json(&self.call(&req, timeout).await?))
    }
}

/// A service served for any type: its requests (a `Stream`, or [`DynService::recv`]).
pub struct DynService {
    name: String,
    ty: Arc<ServiceType>,
    rx: mpsc::Receiver<ServiceRequestSerialized>,
    node: Weak<Inner>,
    id: r2r::ServiceId,
}

impl Drop for DynService {
    fn drop(&mut self) {
        let id = self.id;
        DynNode::post(&self.node, move |node| {
            node.destroy_service(id);
        });
    }
}

impl DynService {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn recv(&mut self) -> Option<DynServiceRequest> {
        let r = self.rx.recv().await?;
        Some(DynServiceRequest { ty: self.ty.clone(), inner: r })
    }
}

/// One request to a [`DynService`].
pub struct DynServiceRequest {
    ty: Arc<ServiceType>,
    inner: ServiceRequestSerialized,
}

impl DynServiceRequest {
    pub fn cdr(&self) -> &[u8] {
        &self.inner.data
    }

    pub fn request(&self) -> Result<MessageValue, DynError> {
        Ok(cdr::decode(&self.ty.request, &self.inner.data)?)
    }

    pub fn request_json(&self) -> Result<Json, DynError> {
        Ok(message_to_json(&self.request()?))
    }

    pub fn respond_cdr(self, response: &[u8]) -> Result<(), DynError> {
        Ok(self.inner.respond(response)?)
    }

    pub fn respond(self, response: &MessageValue) -> Result<(), DynError> {
        let data = cdr::encode(response)?;
        self.respond_cdr(&data)
    }

    pub fn respond_json(self, response: &Json) -> Result<(), DynError> {
        let v = from_json(&self.ty.response, response)?;
        self.respond(&v)
    }
}

// ---------------------------------------------------------------------------------------------
// Action client
// ---------------------------------------------------------------------------------------------

/// A goal's state (action_msgs/msg/GoalStatus).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoalStatus {
    Unknown,
    Accepted,
    Executing,
    Canceling,
    Succeeded,
    Canceled,
    Aborted,
}

impl GoalStatus {
    pub fn from_code(c: i8) -> Self {
        match c {
            1 => Self::Accepted,
            2 => Self::Executing,
            3 => Self::Canceling,
            4 => Self::Succeeded,
            5 => Self::Canceled,
            6 => Self::Aborted,
            _ => Self::Unknown,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Canceled | Self::Aborted)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Accepted => "ACCEPTED",
            Self::Executing => "EXECUTING",
            Self::Canceling => "CANCELING",
            Self::Succeeded => "SUCCEEDED",
            Self::Canceled => "CANCELED",
            Self::Aborted => "ABORTED",
        }
    }
}

struct GoalRoute {
    feedback: mpsc::Sender<MessageValue>,
    status: watch::Sender<GoalStatus>,
}

type Goals = Arc<Mutex<HashMap<[u8; 16], GoalRoute>>>;

/// "As long as it takes" (ten years) for a goal's result.
const NO_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn goal_id_of(v: Option<&Value>) -> Option<[u8; 16]> {
    match v?.as_message()?.get("uuid")? {
        Value::Bytes(b) => b.as_slice().try_into().ok(),
        _ => None,
    }
}

async fn route_feedback(mut sub: Subscription, goals: Goals) {
    while let Some(m) = sub.recv().await {
        let Ok(r) = m else { continue };
        let Some(id) = goal_id_of(r.message.get("goal_id")) else { continue };
        let Some(Value::Message(fb)) = r.message.get("feedback").cloned() else { continue };
        let tx = goals.lock().unwrap_or_else(|e| e.into_inner()).get(&id).map(|g| g.feedback.clone());
        if let Some(tx) = tx {
            let _ = tx.try_send(fb);
        }
    }
}

async fn route_status(mut sub: Subscription, goals: Goals) {
    while let Some(m) = sub.recv().await {
        let Ok(r) = m else { continue };
        let Some(Value::Array(list)) = r.message.get("status_list") else { continue };
        let goals = goals.lock().unwrap_or_else(|e| e.into_inner());
        for s in list {
            let Some(s) = s.as_message() else { continue };
            let Some(id) = goal_id_of(s.get("goal_info").and_then(|g| g.as_message()).and_then(|g| g.get("goal_id"))) else { continue };
            let Some(Value::Int8(code)) = s.get("status") else { continue };
            if let Some(g) = goals.get(&id) {
                g.status.send_replace(GoalStatus::from_code(*code));
            }
        }
    }
}

struct ActionInner {
    name: String,
    ty: Arc<ActionType>,
    send_goal: DynClient,
    get_result: DynClient,
    cancel: DynClient,
    goals: Goals,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ActionInner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// An action client for any type (cheap to clone).
#[derive(Clone)]
pub struct DynActionClient {
    inner: Arc<ActionInner>,
}

/// The outcome of a goal.
#[derive(Clone, Debug)]
pub struct GoalResult {
    pub status: GoalStatus,
    pub result: MessageValue,
}

/// The answer to a cancel request (action_msgs/srv/CancelGoal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelResponse {
    /// 0 ERROR_NONE, 1 ERROR_REJECTED, 2 ERROR_UNKNOWN_GOAL_ID, 3 ERROR_GOAL_TERMINATED.
    pub return_code: i8,
    pub goals_canceling: usize,
}

/// A goal the server accepted: its feedback, status, result, and cancel.
pub struct DynGoal {
    pub id: [u8; 16],
    /// Feedback messages (the `feedback` part of each `FeedbackMessage`), up to 100 waiting.
    pub feedback: mpsc::Receiver<MessageValue>,
    /// The latest status from the action's status topic.
    pub status: watch::Receiver<GoalStatus>,
    /// Resolves with the result once the goal is done (as long as the client lives).
    pub result: oneshot::Receiver<Result<GoalResult, DynError>>,
    client: DynActionClient,
}

impl DynGoal {
    /// The goal id as a UUID string.
    pub fn id_string(&self) -> String {
        r2r::uuid::Uuid::from_bytes(self.id).to_string()
    }

    pub async fn cancel(&self, timeout: Duration) -> Result<CancelResponse, DynError> {
        self.client.cancel_goal(self.id, timeout).await
    }
}

impl Drop for DynGoal {
    fn drop(&mut self) {
        self.client.inner.goals.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl DynActionClient {
    pub fn action_type(&self) -> &Arc<ActionType> {
        &self.inner.ty
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Wait until the action has a server (its goal, result and cancel services).
    pub async fn wait_for_server(&self, timeout: Duration) -> Result<(), DynError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for c in [&self.inner.send_goal, &self.inner.get_result, &self.inner.cancel] {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            c.wait_for_service(left)
                .await
                .map_err(|_| DynError::NotAvailable(format!("action {} has no server (waited {timeout:?})", self.inner.name)))?;
        }
        Ok(())
    }

    /// Send a goal (JSON, fields left out get defaults). `timeout` covers waiting for the server
    /// and its acceptance, not the goal's execution: the result comes when it comes.
    pub async fn send_goal_json(&self, goal: &Json, timeout: Duration) -> Result<DynGoal, DynError> {
        let goal = from_json(&self.inner.ty.goal, goal)?;
        self.send_goal(goal, timeout).await
    }

    pub async fn send_goal(&self, goal: MessageValue, timeout: Duration) -> Result<DynGoal, DynError> {
        if goal.ty.name != self.inner.ty.goal.name {
            return Err(DynError::InvalidArgument(format!("a {} for a {} goal", goal.ty.name, self.inner.ty.name)));
        }
        let id = *r2r::uuid::Uuid::new_v4().as_bytes();
        let sg = &self.inner.ty.send_goal;
        let uuid = from_json(&sg.request.fields[0].ty_message()?, &json!({ "uuid": id.to_vec() }))?;
        let request = MessageValue { ty: sg.request.clone(), fields: vec![Value::Message(uuid.clone()), Value::Message(goal)] };
        // Routes first, so that no feedback or status is missed.
        let (fb_tx, fb_rx) = mpsc::channel(100);
        let (st_tx, st_rx) = watch::channel(GoalStatus::Unknown);
        self.inner.goals.lock().unwrap_or_else(|e| e.into_inner()).insert(id, GoalRoute { feedback: fb_tx, status: st_tx });
        let forget = || {
            self.inner.goals.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        };
        let response = match self.inner.send_goal.call(&request, timeout).await {
            Ok(r) => r,
            Err(e) => {
                forget();
                return Err(e);
            }
        };
        if response.get("accepted") != Some(&Value::Bool(true)) {
            forget();
            return Err(DynError::GoalRejected(self.inner.name.clone()));
        }
        let (res_tx, res_rx) = oneshot::channel();
        let get_result = self.inner.get_result.clone();
        let gr_request = MessageValue { ty: get_result.ty.request.clone(), fields: vec![Value::Message(uuid)] };
        let goals = self.inner.goals.clone();
        tokio::spawn(async move {
            // No timeout: a goal may run for as long as it needs; dropping the client ends this.
            let r = get_result.call(&gr_request, NO_TIMEOUT).await.map(|resp| {
                let code = match resp.get("status") {
                    Some(Value::Int8(c)) => *c,
                    _ => 0,
                };
                let status = GoalStatus::from_code(code);
                if let Some(g) = goals.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                    g.status.send_replace(status);
                }
                let result = match resp.get("result") {
                    Some(Value::Message(m)) => m.clone(),
                    _ => MessageValue { ty: get_result.ty.response.clone(), fields: vec![] },
                };
                GoalResult { status, result }
            });
            let _ = res_tx.send(r);
        });
        Ok(DynGoal { id, feedback: fb_rx, status: st_rx, result: res_rx, client: self.clone() })
    }

    /// Ask the server to cancel a goal.
    pub async fn cancel_goal(&self, id: [u8; 16], timeout: Duration) -> Result<CancelResponse, DynError> {
        let req = json!({ "goal_info": { "goal_id": { "uuid": id.to_vec() } } });
        let resp = self.inner.cancel.call_json(&req, timeout).await?;
        Ok(CancelResponse {
            return_code: resp.get("return_code").and_then(Json::as_i64).and_then(|c| i8::try_from(c).ok()).unwrap_or(-1),
            goals_canceling: resp.get("goals_canceling").and_then(Json::as_array).map_or(0, Vec::len),
        })
    }
}

trait FieldMessage {
    fn ty_message(&self) -> Result<Arc<MessageType>, DynError>;
}

impl FieldMessage for super::types::Field {
    fn ty_message(&self) -> Result<Arc<MessageType>, DynError> {
        match &self.ty.base {
            super::types::BaseType::Message(m) => Ok(m.clone()),
            _ => Err(DynError::InvalidArgument(format!("field {} is not a message", self.name))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Graph
// ---------------------------------------------------------------------------------------------

/// The graph at one moment. Names are sorted; hidden names (a part starting with `_`, such as
/// `/x/_action/feedback`) are included: see [`is_hidden`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// Fully qualified node names (`/ns/name`).
    pub nodes: Vec<String>,
    pub topics: BTreeMap<String, Vec<String>>,
    pub services: BTreeMap<String, Vec<String>>,
    /// Actions (from their `_action/feedback` topics, as rcl_action finds them): name → types.
    pub actions: BTreeMap<String, Vec<String>>,
}

/// Whether a ROS name is hidden (one of its parts starts with `_`), as `ros2 topic list` has it.
pub fn is_hidden(name: &str) -> bool {
    name.split('/').any(|p| p.starts_with('_'))
}

impl Graph {
    fn new(nodes: Vec<(String, String)>, topics: HashMap<String, Vec<String>>, services: HashMap<String, Vec<String>>) -> Self {
        let mut node_names: Vec<String> = nodes
            .into_iter()
            .map(|(n, ns)| if ns.ends_with('/') { format!("{ns}{n}") } else { format!("{ns}/{n}") })
            .collect();
        node_names.sort();
        node_names.dedup();
        let topics: BTreeMap<String, Vec<String>> = topics.into_iter().collect();
        let actions = Graph::actions_of(&topics);
        Graph { nodes: node_names, topics, services: services.into_iter().collect(), actions }
    }

    /// The actions among `topics` (name → action types), from their `_action/feedback` topics.
    pub fn actions_of(topics: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
        let mut actions = BTreeMap::new();
        for (t, types) in topics {
            if let Some(a) = t.strip_suffix("/_action/feedback") {
                let tys: Vec<String> = types.iter().filter_map(|ty| ty.strip_suffix("_FeedbackMessage").map(str::to_string)).collect();
                if !tys.is_empty() {
                    actions.insert(a.to_string(), tys);
                }
            }
        }
        actions
    }
}

/// One node's endpoints, name → types.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeDetails {
    pub publishers: BTreeMap<String, Vec<String>>,
    pub subscribers: BTreeMap<String, Vec<String>>,
    pub services: BTreeMap<String, Vec<String>>,
    pub clients: BTreeMap<String, Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Parameters of other nodes
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct ParamClients {
    list: Arc<r2r::Client<r2r::rcl_interfaces::srv::ListParameters::Service>>,
    get: Arc<r2r::Client<r2r::rcl_interfaces::srv::GetParameters::Service>>,
    set: Arc<r2r::Client<r2r::rcl_interfaces::srv::SetParameters::Service>>,
}

async fn typed_call<T>(node: &Weak<Inner>, client: &r2r::Client<T>, req: &T::Request, timeout: Duration, what: &str) -> Result<T::Response, DynError>
where
    T: r2r::WrappedServiceTypeSupport + 'static,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let available = r2r::Node::is_available(client)?;
    Inner::wake_weak(node);
    match tokio::time::timeout(timeout, available).await {
        Ok(Ok(())) => {}
        _ => return Err(DynError::NotAvailable(format!("{what} has no server (waited {timeout:?})"))),
    }
    match tokio::time::timeout_at(deadline, client.request(req)?).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(DynError::Timeout { what: format!("the response of {what}"), after: timeout }),
    }
}

fn parameter_to_json(v: &r2r::rcl_interfaces::msg::ParameterValue) -> Option<Json> {
    Some(match v.type_ {
        1 => Json::Bool(v.bool_value),
        2 => Json::from(v.integer_value),
        3 => serde_json::Number::from_f64(v.double_value).map_or(Json::Null, Json::Number),
        4 => Json::String(v.string_value.clone()),
        5 => Json::from(v.byte_array_value.clone()),
        6 => Json::from(v.bool_array_value.clone()),
        7 => Json::from(v.integer_array_value.clone()),
        8 => Json::Array(v.double_array_value.iter().map(|d| serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number)).collect()),
        9 => Json::from(v.string_array_value.clone()),
        _ => return None,
    })
}

fn parameter_from_json(j: &Json) -> Option<r2r::rcl_interfaces::msg::ParameterValue> {
    let mut v = r2r::rcl_interfaces::msg::ParameterValue::default();
    match j {
        Json::Bool(b) => {
            v.type_ = 1;
            v.bool_value = *b;
        }
        Json::Number(n) if n.is_i64() => {
            v.type_ = 2;
            v.integer_value = n.as_i64()?;
        }
        Json::Number(n) => {
            v.type_ = 3;
            v.double_value = n.as_f64()?;
        }
        Json::String(s) => {
            v.type_ = 4;
            v.string_value = s.clone();
        }
        Json::Array(a) if a.iter().all(Json::is_boolean) => {
            v.type_ = 6;
            v.bool_array_value = a.iter().filter_map(Json::as_bool).collect();
        }
        Json::Array(a) if a.iter().all(Json::is_i64) => {
            v.type_ = 7;
            v.integer_array_value = a.iter().filter_map(Json::as_i64).collect();
        }
        Json::Array(a) if a.iter().all(Json::is_number) => {
            v.type_ = 8;
            v.double_array_value = a.iter().filter_map(Json::as_f64).collect();
        }
        Json::Array(a) if a.iter().all(Json::is_string) => {
            v.type_ = 9;
            v.string_array_value = a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect();
        }
        _ => return None,
    }
    Some(v)
}
