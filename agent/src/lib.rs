//! # defect-agent
//!
//! The edge inference daemon: camera frames in, a pass/reject decision for every part out.
//!
//! ## Layout
//!
//! - [`embedded`]: the default model bundle compiled into the binary, served when no model
//!   store is configured.
//! - [`classify`]: the one-shot `defect-agent classify FILE...` command.
//!
//! Model packaging, loading and inference live in the `defect-models` crate.

#![forbid(unsafe_code)]

pub mod classify;
pub mod embedded;
