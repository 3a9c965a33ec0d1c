//! The dynamic-message layer: any ROS 2 interface type installed at run time, without compiling it
//! in. The MCP bridge, the rosbridge/Foxglove server and the bag recorder all stand on it.
//!
//! - [`types`] (no ROS): find `.msg`/`.srv`/`.action` definitions on every prefix of
//!   `AMENT_PREFIX_PATH`, parse and resolve them into [`MessageType`]s (fields, types, defaults,
//!   constants), give rosbag2's `ros2msg` text ([`Registry::ros2msg`]) and rosidl's type hash.
//! - [`value`], [`cdr`], [`json`] (no ROS): a message as a typed [`Value`] tree; CDR ↔ value
//!   (byte-compatible with Fast DDS / rclpy); JSON ↔ value with rosbridge's conventions.
//! - [`node`] (r2r): [`DynNode`], one node spun in one thread serving typed and dynamic endpoints:
//!   publishers, subscriptions (decoded or raw CDR with message info), service clients and
//!   servers, action clients, the graph and other nodes' parameters. Type supports are loaded at
//!   run time ([`typesupport`]), so every installed type works, not only r2r's generated ones.
//!
//! ```ignore
//! let registry = Arc::new(Registry::from_env());
//! let dn = DynNode::start(r2r::Node::create(ctx, "bridge", "/rosa")?, registry.clone());
//! let odom = dn.subscribe("/odom", "nav_msgs/msg/Odometry", SubscribeOptions::default()).await?;
//! let cmd = dn.publisher("/cmd_vel", "geometry_msgs/msg/Twist", None).await?;
//! cmd.publish_json(&json!({"linear": {"x": 0.2}}))?;
//! let text = registry.ros2msg("nav_msgs/msg/Odometry")?;   // an MCAP / Foxglove schema
//! ```

pub mod cbor;
pub mod cdr;
pub mod json;
pub mod node;
pub mod types;
pub mod typesupport;
pub mod value;

pub use cdr::CdrError;
pub use json::JsonError;
pub use node::{
    is_hidden, match_publishers, CancelResponse, DynActionClient, DynClient, DynGoal, DynNode, DynPublisher, DynService,
    DynServiceRequest, GoalResult, GoalStatus, Graph, NodeDetails, RawCallbackSubscription, RawSubscription, Received, SubscribeOptions,
    Subscription,
};
pub use r2r::{MessageInfo, SerializedMessage, TopicEndpointInfo};
pub use types::{ActionType, ArrayKind, BaseType, Field, FieldType, MessageType, Primitive, Registry, ServiceType, TypeError, TypeName};
pub use typesupport::TypeSupportError;
pub use value::{MessageValue, Value};

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DynError {
    #[error(transparent)]
    Type(#[from] TypeError),
    #[error(transparent)]
    TypeSupport(#[from] TypeSupportError),
    #[error("invalid message: {0}")]
    Json(#[from] JsonError),
    #[error(transparent)]
    Cdr(#[from] CdrError),
    #[error("ROS: {0}")]
    Ros(#[from] r2r::Error),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    NotAvailable(String),
    #[error("the server of action {0} rejected the goal")]
    GoalRejected(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the ROS node has stopped")]
    Stopped,
}

/// JSON → CDR for a message type (rosbridge's JSON conventions, see [`json`]).
pub fn json_to_cdr(ty: &Arc<MessageType>, msg: &serde_json::Value) -> Result<Vec<u8>, DynError> {
    Ok(cdr::encode(&json::from_json(ty, msg)?)?)
}

/// CDR → JSON for a message type.
pub fn cdr_to_json(ty: &Arc<MessageType>, data: &[u8]) -> Result<serde_json::Value, DynError> {
    Ok(json::message_to_json(&cdr::decode(ty, data)?))
}

#[cfg(test)]
mod tests;
