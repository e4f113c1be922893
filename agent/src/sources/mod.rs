//! Frame sources: where camera frames come from.
//!
//! - `hot_folder`: files a camera writes into a folder, taken when complete.
//! - `http`: frames uploaded with `POST /v1/stations/{station}/frames`.
//!
//! Every source turns a frame into a `pipeline::FrameJob` with its station, part id and
//! acquisition time, and never decides anything itself.

pub mod hot_folder;
pub mod http;
