//! How a configuration's problems are reported: every problem at once, each naming its key,
//! then exit code 78 (`EX_CONFIG`).
//!
//! Both daemons' `Config::load` check every value before anything starts and collect what is
//! wrong into [`Problems`]; `check-config` and `run` print them and exit with [`EXIT_CONFIG`].
//! This module owns the problem list, its text and the exit code; which values are wrong is
//! each daemon's own configuration's business.

use std::fmt;

/// Exit code of a configuration that cannot be used (`EX_CONFIG` of sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// One problem in a configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, such as `poll.interval_s` or `station[1].hot_folder.path`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration, in the order they were found.
///
/// Its text is one problem per line, each indented as a list item: `  - key: message`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<ConfigProblem>);

impl Problems {
    /// An empty list.
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Adds the problem `message` of `key`.
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in the order they were found.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigProblem> {
        self.0.iter()
    }

    /// The keys of the problems, in order (for tests and summaries).
    pub fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|p| p.key.as_str()).collect()
    }

    /// `Ok(value)` when no problem was found, the problems otherwise.
    pub fn into_result<T>(self, value: T) -> Result<T, Problems> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl From<Vec<ConfigProblem>> for Problems {
    fn from(problems: Vec<ConfigProblem>) -> Problems {
        Problems(problems)
    }
}

impl IntoIterator for Problems {
    type Item = ConfigProblem;
    type IntoIter = std::vec::IntoIter<ConfigProblem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a ConfigProblem;
    type IntoIter = std::slice::Iter<'a, ConfigProblem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_on_its_own_line_by_key() {
        let mut problems = Problems::new();
        assert!(problems.is_empty());
        problems.add("poll.interval_s", "must be at least 10");
        problems.add("metrics.listen", "is not an address: x");
        assert_eq!(problems.len(), 2);
        assert_eq!(problems.keys(), ["poll.interval_s", "metrics.listen"]);
        assert_eq!(
            problems.to_string(),
            "  - poll.interval_s: must be at least 10\n  - metrics.listen: is not an address: x"
        );
    }

    #[test]
    fn no_problem_lets_the_value_through() {
        assert_eq!(Problems::new().into_result(7), Ok(7));
        let mut problems = Problems::new();
        problems.add("a", "b");
        assert_eq!(problems.clone().into_result(7), Err(problems));
    }
}
