//! An error and its causes on one line: `what failed: why: the root cause`.
//!
//! This module owns how both daemons and the `model-bundle` tool print an error at their
//! edges (the command line's last words, a log line's `error` field). Every cause of the
//! [`std::error::Error::source`] chain is printed once, in order. That reads well when each
//! error's own text leaves its source out, which is the rule for the `thiserror` types of this
//! workspace: a variant with a `#[source]` or `#[from]` field does not also write `{source}` or
//! `{0}` in its `#[error]` text ([`repeated_cause`] finds one that does).
//!
//! Some dependencies break that rule (`tough`'s errors write their source into their own text).
//! So that their causes are not printed twice either, a cause whose text the error before it
//! already contains is left out.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its causes, separated by `: `.
///
/// `Chain(&error).to_string()` is `"cannot install x: cannot write y: No space left on device"`
/// for an install error caused by a write error caused by an I/O error.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut errors = Vec::new();
        let mut next = Some(self.0);
        while let Some(error) = next {
            errors.push(error);
            next = error.source();
        }
        write_line(f, errors)
    }
}

/// Writes `errors` (outermost first) joined by `: `, leaving out a text the one before contains.
fn write_line<'a>(
    f: &mut impl fmt::Write,
    errors: impl IntoIterator<Item = &'a (dyn Error + 'static)>,
) -> fmt::Result {
    let mut previous: Option<String> = None;
    for error in errors {
        let text = error.to_string();
        match &previous {
            None => f.write_str(&text)?,
            Some(before) if before.contains(&text) => {}
            Some(_) => write!(f, ": {text}")?,
        }
        previous = Some(text);
    }
    Ok(())
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The error and its causes as one line (see [`Chain`]).
pub fn chain(error: &(dyn Error + 'static)) -> String {
    Chain(error).to_string()
}

/// An explicit chain of `errors` (outermost first) as one line, as [`Chain`] prints it.
///
/// For the binaries, whose edge errors are `anyhow` chains: `line(error.chain())`.
pub fn line<'a>(errors: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = write_line(&mut text, errors);
    text
}

/// The first cause in `error`'s chain whose text repeats its predecessor's text, if any.
///
/// For unit tests of error types: an error whose `#[error]` text interpolates its own source
/// is printed twice by [`Chain`]; `assert_eq!(repeated_cause(&e), None)` catches that.
pub fn repeated_cause(error: &(dyn Error + 'static)) -> Option<String> {
    let mut previous = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if previous.contains(&text) {
            return Some(text);
        }
        previous = text;
        cause = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot install model {model}")]
    struct Install {
        model: String,
        #[source]
        source: Write,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write {path}")]
    struct Write {
        path: String,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write {path}: {source}")]
    struct Repeating {
        path: String,
        #[source]
        source: std::io::Error,
    }

    fn install() -> Install {
        Install {
            model: "surface".into(),
            source: Write {
                path: "/store/x.dmb".into(),
                source: std::io::Error::other("No space left on device"),
            },
        }
    }

    #[test]
    fn every_cause_is_printed_once_in_order() {
        let error = install();
        assert_eq!(
            chain(&error),
            "cannot install model surface: cannot write /store/x.dmb: No space left on device"
        );
        assert_eq!(format!("{}", Chain(&error)), chain(&error));
        assert_eq!(repeated_cause(&error), None);
    }

    #[test]
    fn an_error_without_a_source_is_its_own_text() {
        let error = std::io::Error::other("refused");
        assert_eq!(chain(&error), "refused");
    }

    #[test]
    fn line_joins_an_explicit_chain() {
        let error = install();
        let causes: [&(dyn Error + 'static); 2] = [&error, &error.source];
        assert_eq!(
            line(causes),
            "cannot install model surface: cannot write /store/x.dmb"
        );
    }

    #[test]
    fn a_text_that_repeats_its_source_is_caught_and_printed_once() {
        let error = Repeating {
            path: "a".into(),
            source: std::io::Error::other("denied"),
        };
        assert_eq!(repeated_cause(&error).as_deref(), Some("denied"));
        assert_eq!(chain(&error), "cannot write a: denied");
    }
}
