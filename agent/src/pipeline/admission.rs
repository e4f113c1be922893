//! Deadline-aware admission: whether a frame that just arrived can still be decided in time.
//!
//! This module owns the estimate of a frame's service time (the median wall time of the last
//! [`SAMPLES`] frames a worker decoded, preprocessed and ran through the model), the estimate
//! of the output path (the median time from a live outcome made to it logged, which comes
//! before its publication), the count of workers busy now, and the rule built on them: a frame
//! is refused at once only when, behind the frames already waiting and those in work, on the
//! configured number of workers at the estimated service time, plus the output path, it would
//! be published after its deadline. Otherwise it waits its turn,
//! and the queue's capacity is only a bound on the memory the waiting frames hold. Until the
//! first frame was measured nothing says a frame cannot make it, so every frame waits; its
//! deadline timer still answers for it in time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Frames whose service time the estimate is the median of.
pub(crate) const SAMPLES: usize = 32;

/// The service-time estimate and the workers' occupation.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Worker threads deciding frames.
    workers: usize,
    /// Workers deciding a frame now.
    busy: AtomicUsize,
    /// The last [`SAMPLES`] service times, oldest first.
    recent: Mutex<VecDeque<Duration>>,
    /// Their median in nanoseconds; 0 until a frame was measured.
    estimate_ns: AtomicU64,
    /// The last [`SAMPLES`] output-path times, oldest first.
    recent_output: Mutex<VecDeque<Duration>>,
    /// Their median in nanoseconds; 0 until an outcome was logged.
    output_ns: AtomicU64,
}

/// Whether a frame may wait for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// It can be decided in time, or nothing is measured yet: it waits its turn.
    Wait,
    /// It would be decided only after its deadline.
    Refuse {
        /// When it would be decided, from now.
        expected: Duration,
        /// Frames waiting or in work ahead of it.
        ahead: usize,
        /// The service time estimate it was judged with.
        service: Duration,
        /// The output-path estimate added to it.
        output: Duration,
    },
}

impl Admission {
    /// Admission for `workers` worker threads (at least one is assumed).
    pub(crate) fn new(workers: usize) -> Admission {
        Admission {
            workers: workers.max(1),
            busy: AtomicUsize::new(0),
            recent: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            estimate_ns: AtomicU64::new(0),
            recent_output: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            output_ns: AtomicU64::new(0),
        }
    }

    /// The estimated service time of one frame, once a frame was measured.
    pub(crate) fn service_time(&self) -> Option<Duration> {
        match self.estimate_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Workers deciding a frame now.
    pub(crate) fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// A worker took a frame.
    pub(crate) fn started(&self) {
        self.busy.fetch_add(1, Ordering::AcqRel);
    }

    /// A worker is done with its frame.
    pub(crate) fn finished(&self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// Records the service time of a frame the model ran on.
    pub(crate) fn record(&self, took: Duration) {
        record_median(&self.recent, &self.estimate_ns, took);
    }

    /// Records the time from a live outcome made to it logged.
    pub(crate) fn record_output(&self, took: Duration) {
        record_median(&self.recent_output, &self.output_ns, took);
    }

    /// The estimated output path of a live outcome, zero before the first was logged.
    pub(crate) fn output_time(&self) -> Duration {
        Duration::from_nanos(self.output_ns.load(Ordering::Acquire))
    }

    /// Whether a frame arriving now, with `queued` frames waiting ahead of it, can be decided
    /// within `budget`. The frames ahead and the busy workers' frames are served in waves of
    /// `workers`; a busy worker's frame counts in full, so the estimate errs on the late side.
    pub(crate) fn admit(&self, queued: usize, budget: Duration) -> Admit {
        let Some(service) = self.service_time() else {
            return Admit::Wait;
        };
        let ahead = queued + self.busy();
        let waves = u32::try_from(ahead / self.workers + 1).unwrap_or(u32::MAX);
        let output = self.output_time();
        let expected = service.saturating_mul(waves).saturating_add(output);
        if expected <= budget {
            Admit::Wait
        } else {
            Admit::Refuse {
                expected,
                ahead,
                service,
                output,
            }
        }
    }
}

/// Adds `took` to the last [`SAMPLES`] in `recent` and stores their median in `median_ns`.
fn record_median(recent: &Mutex<VecDeque<Duration>>, median_ns: &AtomicU64, took: Duration) {
    let Ok(mut recent) = recent.lock() else {
        return;
    };
    if recent.len() == SAMPLES {
        recent.pop_front();
    }
    recent.push_back(took);
    let mut sorted: Vec<Duration> = recent.iter().copied().collect();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    let ns = u64::try_from(median.as_nanos()).unwrap_or(u64::MAX).max(1);
    median_ns.store(ns, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn before_any_frame_is_measured_every_frame_waits() {
        let admission = Admission::new(2);
        assert_eq!(admission.admit(1000, MS), Admit::Wait);
    }

    #[test]
    fn a_frame_waits_when_the_frames_ahead_leave_it_time_and_is_refused_when_not() {
        let admission = Admission::new(2);
        admission.record(10 * MS);
        // Both workers free: decided in one service time.
        assert_eq!(admission.admit(0, 15 * MS), Admit::Wait);
        // Both busy and 3 waiting: 5 ahead, waves of 2, so it is in the third wave.
        admission.started();
        admission.started();
        assert_eq!(admission.admit(3, 30 * MS), Admit::Wait);
        assert_eq!(
            admission.admit(3, 29 * MS),
            Admit::Refuse {
                expected: 30 * MS,
                ahead: 5,
                service: 10 * MS,
                output: Duration::ZERO,
            }
        );
        // The output path (log, then publish) comes on top.
        admission.record_output(2 * MS);
        assert_eq!(
            admission.admit(3, 31 * MS),
            Admit::Refuse {
                expected: 32 * MS,
                ahead: 5,
                service: 10 * MS,
                output: 2 * MS,
            }
        );
        assert_eq!(admission.admit(3, 32 * MS), Admit::Wait);
        admission.finished();
        admission.finished();
        assert_eq!(admission.busy(), 0);
    }

    #[test]
    fn the_estimate_is_the_median_of_recent_frames_so_one_slow_frame_does_not_move_it() {
        let admission = Admission::new(1);
        for _ in 0..10 {
            admission.record(10 * MS);
        }
        admission.record(900 * MS);
        assert_eq!(admission.service_time(), Some(10 * MS));
        // Only the last SAMPLES frames count: a box that became slower is seen as slower.
        for _ in 0..SAMPLES {
            admission.record(40 * MS);
        }
        assert_eq!(admission.service_time(), Some(40 * MS));
    }
}
