//! The MCP bridge's logic (no r2r): a robot's scope and safety rules ([`scope`]), replies capped
//! for a model's context ([`cap`]), trigger conditions ([`condition`]). The node that serves it,
//! on the dynamic-message layer, is `nodes::mcp_bridge`.

pub mod cap;
pub mod condition;
pub mod scope;
pub mod tf;

pub use cap::{cap, Caps, Capped};
pub use condition::{Condition, ConditionError};
pub use scope::{Access, Kind, RosSection, Scope, ScopeError};

/// The bridge's port (DESIGN.md: `http://127.0.0.1:5002/<robot>/mcp`).
pub const DEFAULT_PORT: u16 = 5002;

/// The MCP endpoint of a bridged robot when its registry entry gives no url.
pub fn default_url(robot: &str) -> String {
    format!("http://127.0.0.1:{DEFAULT_PORT}/{robot}/mcp")
}
