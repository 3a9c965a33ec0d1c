//! rosa's embedded LLM (the `llm_server` node): an OpenAI-compatible endpoint on loopback in front
//! of a local model, so that `./rosa up` works on a machine with no endpoint, no key and no network.
//!
//! ```text
//! kernel, workers, anything ──HTTP──▶ server (OpenAI wire, checks) ──▶ template (Qwen2.5)
//!                                          │  grammar (tool schemas → GBNF)     │
//!                                          ▼                                     ▼
//!                                   queue (fair, 1 at a time) ──▶ backend: llama-server child
//!                                                                   (private port, /completion,
//!                                                                    prompt cache per slot)
//! ```
//!
//! No r2r in here: `nodes::llm_server` adds the parameters and `/diagnostics`.
pub mod api;
pub mod backend;
pub mod grammar;
pub mod queue;
pub mod server;
pub mod template;
