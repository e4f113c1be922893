//! Running a model over an image set: every frame's scores, input statistics and timings.
//!
//! This module owns feeding a labelled [`ImageSet`] through a [`Model`] on the agent's own
//! frame path (decode, preprocess, tract), on several threads with one classifier each, and
//! keeping the per-frame results in set order, unreadable frames included with their error.
//! Turning those results into figures is [`crate::figures`]' job.

use std::sync::Arc;
use std::time::Duration;

use defect_shared::error_chain::chain;

use crate::classifier::{ClassifyError, Model, ModelError, Timings};
use crate::dataset::{Fingerprint, ImageSet, Sample};
use crate::frame::DecodeOptions;
use crate::model_input::DecodeMode;
use crate::preprocess::InputStats;

/// One frame's scores and what it took to get them.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameScores {
    /// One probability per label, in the model's label order.
    pub scores: Vec<f32>,
    /// Brightness and contrast of the model input image.
    pub stats: InputStats,
    /// Time per stage.
    pub timings: Timings,
}

/// One frame of a scored set.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredFrame {
    /// The image and its label.
    pub sample: Sample,
    /// Its scores, or why it could not be read or run: a [`FrameError`] and its causes, as
    /// the reports print it.
    pub result: Result<FrameScores, String>,
}

/// Why one frame of a set has no scores.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The image file could not be read.
    #[error("cannot read")]
    Read(#[source] std::io::Error),
    /// The image could not be decoded, prepared or run.
    #[error(transparent)]
    Classify(#[from] ClassifyError),
}

/// A whole set run through one model.
#[derive(Debug, Clone)]
pub struct ScoredSet {
    /// Every frame, in the set's order.
    pub frames: Vec<ScoredFrame>,
    /// The set's fingerprint ([`Fingerprint`]) over the bytes actually read.
    pub fingerprint: String,
}

impl ScoredSet {
    /// The frames that were scored, with their label's index in `labels` (`None` when the
    /// frame is unlabelled or its label is not one of them).
    pub fn scored<'a>(
        &'a self,
        labels: &'a [String],
    ) -> impl Iterator<Item = (&'a ScoredFrame, Option<usize>, &'a FrameScores)> + 'a {
        self.frames.iter().filter_map(move |f| {
            let scores = f.result.as_ref().ok()?;
            let label = f
                .sample
                .label
                .as_ref()
                .and_then(|l| labels.iter().position(|k| k == l));
            Some((f, label, scores))
        })
    }

    /// The frames that could not be read or run, with their errors.
    pub fn failures(&self) -> impl Iterator<Item = (&Sample, &str)> {
        self.frames
            .iter()
            .filter_map(|f| f.result.as_ref().err().map(|e| (&f.sample, e.as_str())))
    }
}

/// How a set is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoringOptions {
    /// How frames are decoded: as the agent does, or at full size as the gate does.
    pub mode: DecodeMode,
    /// Threads, each with its own classifier (tract runs one inference on one thread).
    pub jobs: usize,
}

impl Default for ScoringOptions {
    fn default() -> Self {
        ScoringOptions {
            mode: DecodeMode::Agent,
            jobs: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// Runs every frame of `set` through `model`.
pub fn score_set(
    model: &Arc<Model>,
    set: &ImageSet,
    options: ScoringOptions,
) -> Result<ScoredSet, ModelError> {
    let jobs = options.jobs.clamp(1, set.samples.len().max(1));
    let mut slots: Vec<Option<(ScoredFrame, Option<String>)>> = vec![None; set.samples.len()];
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|worker| {
                let model = Arc::clone(model);
                scope.spawn(move || -> Result<Vec<_>, ModelError> {
                    let mut classifier = model.classifier()?;
                    classifier.set_decode_options(
                        DecodeOptions::default(),
                        options.mode == DecodeMode::Agent,
                    );
                    let mut out = Vec::new();
                    for index in (worker..set.samples.len()).step_by(jobs) {
                        let sample = &set.samples[index];
                        let (result, bytes) = match std::fs::read(&sample.path) {
                            Ok(bytes) => {
                                let result = classifier
                                    .classify_bytes(&bytes)
                                    .map(|c| FrameScores {
                                        scores: c.scores,
                                        stats: c.input,
                                        timings: c.timings,
                                    })
                                    .map_err(|e| chain(&FrameError::Classify(e)));
                                (result, Some(bytes))
                            }
                            Err(e) => (Err(chain(&FrameError::Read(e))), None),
                        };
                        let digest = bytes.map(|b| crate::bundle::sha256_hex(&b));
                        out.push((
                            index,
                            ScoredFrame {
                                sample: sample.clone(),
                                result,
                            },
                            digest,
                        ));
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(ModelError::ScoringPanicked))
            })
            .collect::<Vec<_>>()
    });
    for result in results {
        for (index, frame, digest) in result? {
            slots[index] = Some((frame, digest));
        }
    }
    let mut fingerprint = Fingerprint::default();
    let mut frames = Vec::with_capacity(slots.len());
    for (frame, digest) in slots.into_iter().flatten() {
        if let Some(digest) = digest {
            fingerprint.add_digest(&frame.sample, &digest);
        }
        frames.push(frame);
    }
    Ok(ScoredSet {
        frames,
        fingerprint: fingerprint.finish(),
    })
}

/// Median and 99th percentile of durations, in milliseconds (0 for an empty list).
pub fn percentiles_ms(mut times: Vec<Duration>) -> (f64, f64) {
    if times.is_empty() {
        return (0.0, 0.0);
    }
    times.sort();
    let at = |q: f64| {
        let index = ((times.len() as f64 - 1.0) * q).round() as usize;
        times[index.min(times.len() - 1)].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_hundred() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let (median, p99) = percentiles_ms(times);
        assert!((median - 51.0).abs() < 1e-9 || (median - 50.0).abs() < 1e-9);
        assert!((p99 - 99.0).abs() < 1e-9, "{p99}");
        assert_eq!(percentiles_ms(Vec::new()), (0.0, 0.0));
    }
}
