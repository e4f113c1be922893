//! Refusing delegated targets roles: this updater trusts the top-level targets role only.
//!
//! This module owns the check that a verified repository publishes every release from
//! `targets.json` itself. TUF lets `targets.json` delegate target paths to other targets roles,
//! each signed by its own keys in its own metadata file that `snapshot.json` lists. A client
//! that supports them must also carry their versions from one check to the next (a snapshot
//! may never drop a role it listed before, TUF 5.5.5) and search them in delegation order; this
//! updater does none of that. So a repository whose `targets.json` delegates, or whose
//! `snapshot.json` lists any metadata besides `targets.json`, is refused whole: [`crate::verify`]
//! runs this check before it remembers a root, raises the floor or reads a single target.
//! Signatures and versions are `tough`'s job, not this module's.

use std::fmt;

use tough::schema::{PathSet, Snapshot, Targets};

/// The one targets metadata file a snapshot may list.
const TOP_LEVEL: &str = "targets.json";

/// At most this many roles, paths or files are named in a refusal; the rest are counted.
const NAMED: usize = 5;

/// How a repository uses delegation, which this updater refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Delegated {
    /// `targets.json` delegates to other targets roles.
    #[error(
        "targets.json delegates to role(s) {}; this updater supports only the top-level \
         targets role: publish models from targets.json",
        Listed(roles)
    )]
    Roles {
        /// The delegated roles, in the order `targets.json` lists them.
        roles: Vec<DelegatedRole>,
    },
    /// `targets.json` lists keys for delegated roles but no role.
    #[error(
        "targets.json lists {keys} key(s) for delegated roles; this updater supports only the \
         top-level targets role: publish models from targets.json"
    )]
    Keys {
        /// How many delegation keys it lists.
        keys: usize,
    },
    /// `snapshot.json` lists metadata of roles other than the top-level targets role.
    #[error(
        "snapshot.json lists delegated role metadata {}; this updater supports only the \
         top-level targets role: publish models from targets.json",
        Listed(files)
    )]
    Snapshot {
        /// The metadata files besides `targets.json`, sorted.
        files: Vec<Quoted>,
    },
}

/// A delegated role as `targets.json` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegatedRole {
    /// The role's name.
    pub name: Quoted,
    /// The target path patterns (or path hash prefixes) it is trusted for.
    pub paths: Vec<Quoted>,
    /// Whether `paths` holds path hash prefixes rather than path patterns.
    pub hash_prefixes: bool,
}

impl fmt::Display for DelegatedRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.hash_prefixes {
            "path hash prefixes"
        } else {
            "paths"
        };
        write!(f, "{} ({kind} {})", self.name, Listed(&self.paths))
    }
}

/// Text from the repository, shown between backticks with control characters escaped, so a
/// role name cannot break a log line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quoted(pub String);

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.0.escape_debug())
    }
}

/// Items joined by `, `: the first [`NAMED`], then how many more; `none` when empty.
struct Listed<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for Listed<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, item) in self.0.iter().take(NAMED).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{item}")?;
        }
        if self.0.len() > NAMED {
            write!(f, " and {} more", self.0.len() - NAMED)?;
        }
        Ok(())
    }
}

/// Refuses a repository that delegates: `targets.json` with delegated roles or keys, or a
/// `snapshot.json` listing any metadata besides `targets.json`. An empty `delegations` object
/// delegates nothing and passes.
pub fn refuse(targets: &Targets, snapshot: &Snapshot) -> Result<(), Delegated> {
    if let Some(delegations) = &targets.delegations {
        if !delegations.roles.is_empty() {
            let roles = delegations
                .roles
                .iter()
                .map(|role| {
                    let (paths, hash_prefixes) = match &role.paths {
                        PathSet::Paths(paths) => (
                            paths.iter().map(|p| Quoted(p.value().to_owned())).collect(),
                            false,
                        ),
                        PathSet::PathHashPrefixes(prefixes) => (
                            prefixes
                                .iter()
                                .map(|p| Quoted(p.value().to_owned()))
                                .collect(),
                            true,
                        ),
                    };
                    DelegatedRole {
                        name: Quoted(role.name.clone()),
                        paths,
                        hash_prefixes,
                    }
                })
                .collect();
            return Err(Delegated::Roles { roles });
        }
        if !delegations.keys.is_empty() {
            return Err(Delegated::Keys {
                keys: delegations.keys.len(),
            });
        }
    }
    let mut files: Vec<Quoted> = snapshot
        .meta
        .keys()
        .filter(|file| file.as_str() != TOP_LEVEL)
        .map(|file| Quoted(file.clone()))
        .collect();
    if !files.is_empty() {
        files.sort();
        return Err(Delegated::Snapshot { files });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn targets(delegations: Option<Value>) -> Targets {
        let mut value = json!({
            "_type": "targets",
            "spec_version": "1.0.31",
            "version": 2,
            "expires": "2030-01-01T00:00:00Z",
            "targets": {},
        });
        if let Some(delegations) = delegations {
            value["delegations"] = delegations;
        }
        serde_json::from_value(value).expect("targets metadata")
    }

    fn snapshot(files: &[&str]) -> Snapshot {
        let meta: serde_json::Map<String, Value> = files
            .iter()
            .map(|file| ((*file).to_owned(), json!({"version": 1})))
            .collect();
        serde_json::from_value(json!({
            "_type": "snapshot",
            "spec_version": "1.0.31",
            "version": 2,
            "expires": "2030-01-01T00:00:00Z",
            "meta": meta,
        }))
        .expect("snapshot metadata")
    }

    fn role(name: &str, paths: Value) -> Value {
        let mut role = json!({
            "name": name,
            "keyids": ["ab"],
            "threshold": 1,
            "terminating": true,
        });
        if let (Some(role), Some(paths)) = (role.as_object_mut(), paths.as_object()) {
            role.extend(paths.clone());
        }
        role
    }

    #[test]
    fn top_level_targets_alone_pass() {
        assert_eq!(refuse(&targets(None), &snapshot(&["targets.json"])), Ok(()));
        let empty = json!({"keys": {}, "roles": []});
        assert_eq!(
            refuse(&targets(Some(empty)), &snapshot(&["targets.json"])),
            Ok(())
        );
    }

    #[test]
    fn a_delegated_role_is_refused_by_name_and_paths() {
        let delegations = json!({
            "keys": {},
            "roles": [
                role("factory-a", json!({"paths": ["surface-classifier-*.dmb"]})),
                role("bins", json!({"path_hash_prefixes": ["00", "01"]})),
            ],
        });
        let refused = refuse(
            &targets(Some(delegations)),
            &snapshot(&["targets.json", "factory-a.json", "bins.json"]),
        )
        .expect_err("delegations refused");
        assert_eq!(
            refused.to_string(),
            "targets.json delegates to role(s) `factory-a` (paths `surface-classifier-*.dmb`), \
             `bins` (path hash prefixes `00`, `01`); this updater supports only the top-level \
             targets role: publish models from targets.json"
        );
    }

    #[test]
    fn a_delegating_targets_file_is_refused_even_when_the_snapshot_dropped_the_role() {
        let delegations = json!({"keys": {}, "roles": [role("factory-a", json!({"paths": []}))]});
        let refused = refuse(&targets(Some(delegations)), &snapshot(&["targets.json"]));
        assert!(
            matches!(&refused, Err(Delegated::Roles { roles }) if roles.len() == 1),
            "{refused:?}"
        );
        assert!(
            refused
                .expect_err("refused")
                .to_string()
                .contains("`factory-a` (paths none)")
        );
    }

    #[test]
    fn delegation_keys_without_a_role_are_refused() {
        let key: tough::schema::key::Key = serde_json::from_value(json!({
            "keytype": "ed25519",
            "scheme": "ed25519",
            "keyval": {"public": "11".repeat(32)},
        }))
        .expect("ed25519 key");
        let id = hex::encode(key.key_id().expect("key id"));
        let delegations = json!({"keys": {id: key}, "roles": []});
        let refused = refuse(&targets(Some(delegations)), &snapshot(&["targets.json"]));
        assert_eq!(refused, Err(Delegated::Keys { keys: 1 }));
    }

    #[test]
    fn a_snapshot_listing_other_role_metadata_is_refused() {
        let refused = refuse(
            &targets(None),
            &snapshot(&["targets.json", "factory-b.json", "factory-a.json"]),
        )
        .expect_err("snapshot refused");
        assert_eq!(
            refused.to_string(),
            "snapshot.json lists delegated role metadata `factory-a.json`, `factory-b.json`; \
             this updater supports only the top-level targets role: publish models from \
             targets.json"
        );
    }

    #[test]
    fn names_are_escaped_and_long_lists_counted() {
        let roles: Vec<Value> = (0..7)
            .map(|i| role(&format!("r{i}\nfake log line"), json!({"paths": ["x"]})))
            .collect();
        let text = refuse(
            &targets(Some(json!({"keys": {}, "roles": roles}))),
            &snapshot(&["targets.json"]),
        )
        .expect_err("refused")
        .to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("`r0\\nfake log line` (paths `x`)"), "{text}");
        assert!(text.contains(" and 2 more;"), "{text}");
    }
}
