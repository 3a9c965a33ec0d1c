//! Node wiring: each node's ROS endpoints around the r2r-free logic of the library.
pub mod kernel;
pub mod llm_server;
pub mod mcp_bridge;
pub mod process_manager;
pub mod stt;
pub mod worker;
pub mod reachy_driver;
pub mod rosa_web;
pub mod bag;
