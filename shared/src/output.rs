//! Standard output of the command-line tools, which ends quietly when its reader goes away.
//!
//! This module owns what `defect-agent status | head` and the like do when `head` has read
//! enough: the command exits with status 0 and says nothing, instead of panicking on the broken
//! pipe (Rust ignores SIGPIPE, so a write to a closed pipe is an error, and `println!` panics on
//! it). [`outln!`](crate::outln) is `println!` with that behaviour; [`is_broken_pipe`] tells a
//! command whose writer returned an error whether that error was the reader going away.

use std::error::Error;
use std::io::Write;

/// Writes `text` and a newline to standard output. A closed pipe ends the process quietly
/// with status 0; any other write error ends it with status 1 and a message.
pub fn line(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(error) = written {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cannot write to standard output: {error}");
        std::process::exit(1);
    }
}

/// Whether `error`, or one of its causes, is a write to a pipe whose reader went away.
pub fn is_broken_pipe(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// `println!` for command output: ends quietly when the reader went away ([`line`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(&format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write the report")]
    struct Report(#[source] std::io::Error);

    #[test]
    fn a_broken_pipe_is_found_among_the_causes() {
        let broken = Report(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&broken));
        let full = Report(std::io::Error::other("disk full"));
        assert!(!is_broken_pipe(&full));
    }
}
