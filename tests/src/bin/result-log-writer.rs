//! `result-log-writer DIR [DELIVER_EVERY]`: appends outcomes to the result log in `DIR` until it
//! is killed, for `tests/tests/e2e/result_log_crash.rs`.
//!
//! Each loop builds a batch of 1 to 4 outcomes whose content is [`expected`](defect_e2e::crash_fixture::expected) of the seq each will
//! get, calls `ResultLog::append`, and only after it returns prints `ack <seq>` per outcome and
//! flushes stdout: a printed ack is a promise that the outcome is on disk. With
//! `DELIVER_EVERY` = n > 0, every n-th batch it also acts as the forwarder: it reads up to 16
//! undelivered outcomes, checks them, marks them delivered and prints `delivered <seq>`.
//!
//! Exit codes: 2 bad arguments or the log failed, 3 the log gave back something else than
//! was written.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use defect_agent::outcome::Outcome;
use defect_agent::result_log::{ResultLog, RetentionPolicy};
use defect_e2e::crash_fixture::expected;

/// Undelivered outcomes read per forwarder pass.
const DELIVER_BATCH: usize = 16;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: result-log-writer DIR [DELIVER_EVERY]");
        return ExitCode::from(2);
    };
    let deliver_every: u64 = match args.next().map(|a| a.to_string_lossy().parse()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("DELIVER_EVERY: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&dir, deliver_every) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("result-log-writer: {message}");
            ExitCode::from(code)
        }
    }
}

/// Appends until killed; returns only on a failure, with its exit code.
fn run(dir: &std::path::Path, deliver_every: u64) -> Result<(), (u8, String)> {
    let policy = RetentionPolicy {
        max_entries: u64::MAX,
        max_age: Duration::MAX,
    };
    let log = ResultLog::open(dir, policy).map_err(|e| (2, e.to_string()))?;
    // Batch sizes differ from run to run, driven by the process id.
    let mut rng = u64::from(std::process::id()) | 1;
    let mut stdout = std::io::stdout().lock();
    for round in 1_u64.. {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let first = log.last_seq() + 1;
        let mut batch: Vec<Outcome> = (first..first + 1 + rng % 4).map(expected).collect();
        log.append(&mut batch).map_err(|e| (2, e.to_string()))?;
        for (outcome, want) in batch.iter().zip(first..) {
            if outcome.seq != want {
                return Err((3, format!("append gave seq {} for {want}", outcome.seq)));
            }
            writeln!(stdout, "ack {}", outcome.seq).map_err(|e| (2, e.to_string()))?;
        }
        stdout.flush().map_err(|e| (2, e.to_string()))?;

        if deliver_every > 0 && round.is_multiple_of(deliver_every) {
            let pending = log
                .undelivered(DELIVER_BATCH)
                .map_err(|e| (2, e.to_string()))?;
            for outcome in &pending {
                if *outcome != expected(outcome.seq) {
                    return Err((3, format!("undelivered gave {outcome:?}")));
                }
            }
            if let Some(last) = pending.last() {
                log.mark_delivered(last.seq)
                    .map_err(|e| (2, e.to_string()))?;
                writeln!(stdout, "delivered {}", last.seq).map_err(|e| (2, e.to_string()))?;
                stdout.flush().map_err(|e| (2, e.to_string()))?;
            }
        }
    }
    Ok(())
}
