//! The Reachy Mini driver's logic (no r2r): the daemon client, the safety limits, URDF kinematics
//! for /tf, speech out, camera, vision, and the MCP tools. `nodes::reachy_driver` wires it to ROS.
pub mod camera;
pub mod daemon;
pub mod limits;
pub mod speech;
pub mod tools;
pub mod urdf;
pub mod vision;
