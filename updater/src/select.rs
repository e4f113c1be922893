//! Which of the repository's releases this box should install.
//!
//! This module owns one pure choice: among the verified releases, the highest `model_version`
//! of this box's model that is meant for its line and stations, above everything this box has
//! ever installed (the model floor), and not marked bad here. Releases that are refused for a
//! reason worth telling ops (a lower version than installed, a version marked bad) are listed.

use std::collections::BTreeMap;

use crate::config::BoxSection;
use crate::state::BadVersion;
use crate::verify::Release;

/// The choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    /// The release to install, if any.
    pub install: Option<Release>,
    /// Releases of this box's model that were refused, with why.
    pub refused: Vec<String>,
}

/// Whether a release is meant for this box's line and stations.
pub fn is_for_box(release: &Release, target: &BoxSection) -> bool {
    let line_ok = release.lines.is_empty()
        || target
            .line
            .as_ref()
            .is_some_and(|line| release.lines.contains(line));
    let station_ok =
        release.stations.is_empty() || target.stations.iter().any(|s| release.stations.contains(s));
    release.model == target.model && line_ok && station_ok
}

/// Chooses the release to install. `floor` is the highest model version ever installed here.
pub fn choose(
    releases: &[Release],
    target: &BoxSection,
    floor: u64,
    bad: &BTreeMap<String, BadVersion>,
) -> Choice {
    let mut choice = Choice::default();
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
        if release.model_version <= floor {
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
        let choice = choose(&releases, &target(), 1, &BTreeMap::new());
        assert_eq!(choice.install.map(|r| r.model_version), Some(4));
        let choice = choose(&releases, &target(), 4, &BTreeMap::new());
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
        let choice = choose(&releases, &target(), 2, &bad);
        assert_eq!(choice.install, None);
        assert!(
            choice.refused[0].contains("marked bad"),
            "{:?}",
            choice.refused
        );
        let choice = choose(&releases[..1], &target(), 5, &BTreeMap::new());
        assert!(
            choice.refused[0].contains("never goes down"),
            "{:?}",
            choice.refused
        );
    }
}
