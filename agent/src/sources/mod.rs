//! Frame sources: where camera frames come from.
//!
//! - `hot_folder`: files a camera writes into a folder, taken when complete.
//! - `http`: frames uploaded with `POST /v1/stations/{station}/frames`.
//! - `in_flight`: the hot folders' markers of frame files in flight, and the quarantine of a
//!   file the agent died with twice.
//!
//! Every source implements [`FrameSource`]: it is built (and checked: the folder exists, the
//! port is bound) before the daemon starts it, then turns each frame into a
//! `pipeline::FrameJob` with its station, part id and acquisition time until the daemon's
//! shutdown token is cancelled. A source never decides anything itself.

pub mod hot_folder;
pub mod http;
pub mod in_flight;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pipeline::Pipeline;

/// Everything that delivers frames: a hot folder, the HTTP upload, a camera.
pub trait FrameSource: Send {
    /// What the source is, for logs: `hot folder /srv/frames (station cam1)`.
    fn describe(&self) -> String;

    /// Starts delivering frames into `pipeline`, on tasks spawned on `tasks`, until `shutdown`
    /// is cancelled. Returns at once.
    fn start(self: Box<Self>, pipeline: Pipeline, shutdown: CancellationToken, tasks: &TaskTracker);
}
