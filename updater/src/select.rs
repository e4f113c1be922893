//! Which of the repository's releases this box should install.
//!
//! This module owns one pure choice: among the verified releases, the highest `model_version`
//! of this box's model that is meant for its line and stations, above everything this box has
//! ever installed (the model floor), and not marked bad here. Releases that are refused for a
//! reason worth telling ops (a lower version than installed, a version marked bad) are listed.

use std::collections::BTreeMap;

use crate::config::BoxSection;
use crate::state::{BadVersion, DeferredVersion};
use crate::verify::Release;

/// The choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    /// The release to install, if any.
    pub install: Option<Release>,
    /// Releases of this box's model that were refused, with why.
    pub refused: Vec<String>,
    /// Releases passed over because they are not for this box (another model, line or
    /// station) or not above what it has installed, each with why.
    pub skipped: Vec<String>,
}

/// Why a release is not meant for this box, or `None` when it is.
pub fn not_for_box(release: &Release, target: &BoxSection) -> Option<String> {
    if release.model != target.model {
        return Some(format!(
            "{} is for model {}, this box runs {}",
            release.target, release.model, target.model
        ));
    }
    let line_ok = release.lines.is_empty()
        || target
            .line
            .as_ref()
            .is_some_and(|line| release.lines.contains(line));
    if !line_ok {
        return Some(format!(
            "{} is for lines {}, this box is {}",
            release.target,
            release.lines.join(", "),
            target.line.as_ref().map_or(
                "on no line ([box] line is not set)".to_owned(),
                |line| format!("on line {line}")
            )
        ));
    }
    let station_ok =
        release.stations.is_empty() || target.stations.iter().any(|s| release.stations.contains(s));
    if !station_ok {
        return Some(format!(
            "{} is for stations {}, this box has {}",
            release.target,
            release.stations.join(", "),
            if target.stations.is_empty() {
                "none ([box] stations is empty)".to_owned()
            } else {
                target.stations.join(", ")
            }
        ));
    }
    None
}

/// Whether a release is meant for this box's model, line and stations.
pub fn is_for_box(release: &Release, target: &BoxSection) -> bool {
    not_for_box(release, target).is_none()
}

/// The versions this box holds back, by bundle SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    /// Marked bad: never installed again.
    pub bad: &'a BTreeMap<String, BadVersion>,
    /// Refused on latency alone: not before their retry time.
    pub deferred: &'a BTreeMap<String, DeferredVersion>,
    /// Now, Unix ms, to compare retry times with.
    pub now_ms: u64,
}

/// Chooses the release to install. `floor` is the highest model version ever installed here.
pub fn choose(releases: &[Release], target: &BoxSection, floor: u64, held: &Held<'_>) -> Choice {
    let bad = held.bad;
    let mut choice = Choice {
        skipped: releases
            .iter()
            .filter_map(|r| not_for_box(r, target))
            .collect(),
        ..Choice::default()
    };
    let newest_offered = releases
        .iter()
        .filter(|r| is_for_box(r, target))
        .map(|r| r.model_version)
        .max();
    for release in releases.iter().filter(|r| is_for_box(r, target)) {
        let sha = release.sha256_hex();
        if let Some(bad) = bad.get(&sha) {
            if release.model_version > floor || Some(release.model_version) == newest_offered {
                choice.refused.push(format!(
                    "{} (model_version {}) is marked bad on this box: {}",
                    release.target, release.model_version, bad.reason
                ));
            }
            continue;
        }
        if let Some(deferred) = held.deferred.get(&sha)
            && deferred.retry_after_ms > held.now_ms
        {
            choice.skipped.push(format!(
                "{} (model_version {}) is deferred until {}: {}",
                release.target,
                release.model_version,
                crate::clock::rfc3339(deferred.retry_after_ms),
                deferred.reason
            ));
            continue;
        }
        if release.model_version <= floor {
            choice.skipped.push(format!(
                "{} is model_version {}, not above the {floor} installed here",
                release.target, release.model_version
            ));
            continue;
        }
        if choice
            .install
            .as_ref()
            .is_none_or(|best| release.model_version > best.model_version)
        {
            choice.install = Some(release.clone());
        }
    }
    if let Some(newest) = newest_offered
        && newest < floor
    {
        choice.refused.push(format!(
            "the repository's newest {} is model_version {newest}, below the {floor} already \
             installed here: a model_version never goes down",
            target.model
        ));
    }
    choice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: u64, stations: &[&str], lines: &[&str]) -> Release {
        Release {
            target: format!("m-{version}.dmb"),
            model: "m".into(),
            model_version: version,
            version: version.to_string(),
            stations: stations.iter().map(|s| s.to_string()).collect(),
            lines: lines.iter().map(|s| s.to_string()).collect(),
            canary: None,
            length: 1,
            sha256: [version as u8; 32],
            url: url::Url::parse("http://x/").expect("url"),
        }
    }

    const NO_DEFERRED: &BTreeMap<String, DeferredVersion> = &BTreeMap::new();

    fn held(bad: &BTreeMap<String, BadVersion>) -> Held<'_> {
        Held {
            bad,
            deferred: NO_DEFERRED,
            now_ms: 1_000,
        }
    }

    #[test]
    fn a_deferred_version_waits_for_its_retry_time_then_is_chosen() {
        let releases = [release(3, &[], &[])];
        let deferred = BTreeMap::from([(
            hex::encode([3u8; 32]),
            DeferredVersion {
                model: "m".into(),
                model_version: 3,
                reason: "over the latency budget".into(),
                refusals: 1,
                retry_after_ms: 5_000,
            },
        )]);
        let bad = BTreeMap::new();
        let at = |now_ms| Held {
            bad: &bad,
            deferred: &deferred,
            now_ms,
        };
        let choice = choose(&releases, &target(), 2, &at(4_999));
        assert_eq!(choice.install, None);
        assert!(
            choice.skipped[0].contains("deferred until"),
            "{:?}",
            choice.skipped
        );
        let choice = choose(&releases, &target(), 2, &at(5_000));
        assert_eq!(choice.install.map(|r| r.model_version), Some(3));
    }

    fn target() -> BoxSection {
        BoxSection {
            model: "m".into(),
            line: Some("line3".into()),
            stations: vec!["cam1".into()],
        }
    }

    #[test]
    fn the_highest_version_for_this_box_above_the_floor_wins() {
        let releases = [
            release(2, &[], &[]),
            release(5, &["cam2"], &[]),
            release(4, &["cam1"], &["line3"]),
            release(3, &[], &["line9"]),
        ];
        let choice = choose(&releases, &target(), 1, &held(&BTreeMap::new()));
        assert_eq!(choice.install.map(|r| r.model_version), Some(4));
        let choice = choose(&releases, &target(), 4, &held(&BTreeMap::new()));
        assert_eq!(choice.install, None);
    }

    #[test]
    fn bad_and_lower_versions_are_refused_with_a_reason() {
        let releases = [release(2, &[], &[]), release(3, &[], &[])];
        let bad = BTreeMap::from([(
            hex::encode([3u8; 32]),
            BadVersion {
                model: "m".into(),
                model_version: 3,
                reason: "refused by the agent".into(),
                at_ms: 0,
            },
        )]);
        let choice = choose(&releases, &target(), 2, &held(&bad));
        assert_eq!(choice.install, None);
        assert!(
            choice.refused[0].contains("marked bad"),
            "{:?}",
            choice.refused
        );
        let choice = choose(&releases[..1], &target(), 5, &held(&BTreeMap::new()));
        assert!(
            choice.refused[0].contains("never goes down"),
            "{:?}",
            choice.refused
        );
    }

    #[test]
    fn every_release_passed_over_says_why() {
        let mut other_model = release(9, &[], &[]);
        other_model.model = "n".into();
        other_model.target = "n-9.dmb".into();
        let releases = [
            release(2, &[], &[]),
            release(5, &["cam2"], &[]),
            release(3, &[], &["line9"]),
            other_model,
        ];
        let choice = choose(&releases, &target(), 2, &held(&BTreeMap::new()));
        assert_eq!(choice.install, None);
        let said = choice.skipped.join("\n");
        for reason in [
            "n-9.dmb is for model n, this box runs m",
            "m-5.dmb is for stations cam2, this box has cam1",
            "m-3.dmb is for lines line9, this box is on line line3",
            "m-2.dmb is model_version 2, not above the 2 installed here",
        ] {
            assert!(said.contains(reason), "{reason:?} missing from:\n{said}");
        }
        let unset = BoxSection {
            line: None,
            ..target()
        };
        let choice = choose(&releases, &unset, 2, &held(&BTreeMap::new()));
        assert!(
            choice
                .skipped
                .iter()
                .any(|s| s.contains("on no line ([box] line is not set)")),
            "{:?}",
            choice.skipped
        );
    }
}
