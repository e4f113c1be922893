//! Kill -9 the result log's writer in a loop while it writes, and check that nothing it
//! acknowledged is lost or corrupted.
//!
//! Each round starts `result-log-writer` on the same log folder, lets it append for a
//! pseudo-random few milliseconds, kills it with SIGKILL, then opens the log here and checks:
//! every acknowledged outcome not yet delivered is there and equals what the writer wrote; every
//! entry in the log decodes to the outcome of its seq; seqs increase and are never handed out
//! twice, across rounds and across deliveries. Odd rounds also deliver (so kills land in
//! `mark_delivered` too); every eighth round kills blindly, possibly while the log is opening
//! and recovering.

use std::collections::BTreeSet;
use std::fs::{File, TryLockError};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use defect_agent::result_log::{ResultLog, RetentionPolicy};
use defect_e2e::crash_fixture::expected;

/// Writer runs killed and checked.
const ROUNDS: u64 = 60;

/// What one round of the writer said before it was killed.
#[derive(Default)]
struct Said {
    /// Seqs acknowledged (`ack <seq>`), in the order printed.
    acked: Vec<u64>,
    /// Highest seq the writer reported as delivered (`delivered <seq>`), 0 if none.
    delivered: u64,
}

/// Totals over every round, printed at the end.
#[derive(Default, Debug)]
struct Totals {
    acked: usize,
    /// Acknowledged outcomes found and compared, summed over rounds (an outcome is checked
    /// at every round until it is delivered).
    checked_present: usize,
    /// Acknowledged outcomes correctly gone because they were delivered.
    checked_delivered: usize,
    /// Entries compared through `undelivered`, acknowledged or not, summed over rounds.
    entries_scanned: usize,
    /// Rounds killed before their first ack.
    killed_before_first_ack: usize,
    /// Outcomes written but killed before their ack was printed, found intact.
    unacked_survivors: usize,
    /// Rounds killed inside `mark_delivered`, after the cursor moved and before it said so.
    cursor_ahead_of_ack: usize,
    /// Rounds whose delivered cursor, not yet flushed, fell back behind the last delivery the
    /// writer acknowledged (those outcomes are forwarded again).
    cursor_behind_ack: usize,
}

#[test]
fn acknowledged_results_survive_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("results");
    let writer = defect_e2e::binary("result-log-writer");
    let mut rng = Xorshift(0x2545_F491_4F6C_DD1D);
    // Acknowledged seqs not yet seen delivered.
    let mut pending: BTreeSet<u64> = BTreeSet::new();
    // Every seq the log held at the previous check: new acks must be above it.
    let mut floor = 0;
    // The delivered cursor at the previous check.
    let mut cursor_before = 0;
    let mut totals = Totals::default();

    for round in 0..ROUNDS {
        let deliver_every = if round % 2 == 1 { "3" } else { "0" };
        wait_until_unlocked(round, &dir);
        let mut child = Command::new(&writer)
            .arg(&dir)
            .arg(deliver_every)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start result-log-writer");
        let mut lines = read_lines(&mut child);

        if round % 8 == 7 {
            thread::sleep(Duration::from_millis(rng.below(15)));
        } else {
            match lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => lines.push_back(line),
                Err(e) => panic!(
                    "round {round}: no ack from the writer ({e}): {}",
                    stderr(&mut child)
                ),
            }
            thread::sleep(Duration::from_millis(2 + rng.below(100)));
        }
        child.kill().expect("SIGKILL the writer");
        let status = child.wait().expect("wait for the writer");
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the writer ended by itself ({status}): {}",
            stderr(&mut child)
        );
        let said = parse(round, lines.rest());
        if said.acked.is_empty() {
            totals.killed_before_first_ack += 1;
        }
        totals.acked += said.acked.len();

        // Seqs increase within the round and start above everything the log held before.
        for pair in said.acked.windows(2) {
            assert!(
                pair[0] < pair[1],
                "round {round}: acks out of order: {pair:?}"
            );
        }
        if let Some(&first) = said.acked.first() {
            assert!(
                first > floor,
                "round {round}: seq {first} handed out again (the log already held up to {floor})"
            );
        }
        pending.extend(&said.acked);

        let log = ResultLog::open(&dir, keep_everything()).expect("open the log after the kill");
        let delivered = log.delivered_seq();
        // The cursor is not flushed on delivery (it rides on the next append's flush), so a
        // crash may put it back: those outcomes are forwarded again (consumers de-duplicate by
        // seq). It never goes below what an earlier round saw, and never past what was written.
        assert!(
            delivered >= cursor_before,
            "round {round}: delivered cursor {delivered} went below {cursor_before}"
        );
        assert!(
            delivered <= log.last_seq(),
            "round {round}: delivered cursor {delivered} is past the last seq {}",
            log.last_seq()
        );
        if delivered < said.delivered {
            totals.cursor_behind_ack += 1;
        }
        if delivered > said.delivered.max(cursor_before) {
            totals.cursor_ahead_of_ack += 1;
        }
        if let Some(&max) = said.acked.last() {
            assert!(
                log.last_seq() >= max,
                "round {round}: last_seq {} < acked {max}",
                log.last_seq()
            );
        }

        // Every acknowledged outcome is either delivered (and gone) or there, intact.
        let mut lost = Vec::new();
        let still: BTreeSet<u64> = pending.split_off(&(delivered + 1));
        for &seq in &pending {
            assert_eq!(
                log.get(seq).expect("get"),
                None,
                "round {round}: delivered {seq} is back"
            );
            totals.checked_delivered += 1;
        }
        pending = still;
        for &seq in &pending {
            match log.get(seq) {
                Ok(Some(outcome)) => {
                    assert_eq!(outcome, expected(seq), "round {round}: seq {seq} changed");
                    totals.checked_present += 1;
                }
                Ok(None) => lost.push(seq),
                Err(e) => panic!("round {round}: acknowledged seq {seq} is corrupt: {e}"),
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged seqs lost: {lost:?}"
        );

        // Every entry in the log, acknowledged or not, is intact and in order.
        let all = log.undelivered(usize::MAX).expect("undelivered");
        assert_eq!(
            log.corrupt_total(),
            0,
            "round {round}: corrupt entries found"
        );
        assert_eq!(
            all.len() as u64,
            log.backlog(),
            "round {round}: backlog count is off"
        );
        let mut previous = delivered;
        for outcome in &all {
            assert!(
                outcome.seq > previous,
                "round {round}: seq {} after {previous}",
                outcome.seq
            );
            assert_eq!(
                *outcome,
                expected(outcome.seq),
                "round {round}: seq {} changed",
                outcome.seq
            );
            previous = outcome.seq;
        }
        let listed: BTreeSet<u64> = all.iter().map(|o| o.seq).collect();
        assert!(
            pending.is_subset(&listed),
            "round {round}: undelivered misses acknowledged seqs"
        );
        totals.entries_scanned += all.len();
        let acked_max = said.acked.last().copied().unwrap_or(floor);
        totals.unacked_survivors += all.iter().filter(|o| o.seq > acked_max).count();
        floor = log.last_seq();
        cursor_before = delivered;

        // Now and then everything is delivered, so the next seq must come from the high-water mark.
        if round % 10 == 9 && floor > 0 {
            log.mark_delivered(floor).expect("deliver everything");
            log.sync().expect("sync the cursor");
            cursor_before = floor;
        }
        drop(log);
    }

    println!("{ROUNDS} rounds: {totals:?}");
    assert!(
        totals.acked > ROUNDS as usize,
        "the writer acknowledged too little to test anything"
    );
}

/// Lines the writer printed, read on a thread so the test never blocks on the pipe.
struct Lines {
    rx: mpsc::Receiver<String>,
    reader: thread::JoinHandle<()>,
    early: Vec<String>,
}

impl Lines {
    fn recv_timeout(&self, timeout: Duration) -> Result<String, mpsc::RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    fn push_back(&mut self, line: String) {
        self.early.push(line);
    }

    /// Every line, once the writer is dead and its stdout closed.
    fn rest(self) -> Vec<String> {
        self.reader.join().expect("stdout reader");
        let mut all = self.early;
        all.extend(self.rx.try_iter());
        all
    }
}

fn read_lines(child: &mut Child) -> Lines {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        // A line cut short by the kill has no newline and is not an ack.
        while stdout.read_line(&mut line).is_ok_and(|n| n > 0) && line.ends_with('\n') {
            if tx.send(line.trim_end().to_owned()).is_err() {
                break;
            }
            line.clear();
        }
    });
    Lines {
        rx,
        reader,
        early: Vec::new(),
    }
}

fn parse(round: u64, lines: Vec<String>) -> Said {
    let mut said = Said::default();
    for line in lines {
        let number = |rest: &str| -> u64 {
            rest.parse()
                .unwrap_or_else(|e| panic!("round {round}: bad line {line:?}: {e}"))
        };
        if let Some(rest) = line.strip_prefix("ack ") {
            said.acked.push(number(rest));
        } else if let Some(rest) = line.strip_prefix("delivered ") {
            said.delivered = said.delivered.max(number(rest));
        } else {
            panic!("round {round}: unexpected line {line:?}");
        }
    }
    said
}

fn stderr(child: &mut Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// Waits until nothing holds the log's lock any more, so that the writer started next can open
/// it. sled 0.34 releases its lock on `<dir>/db` from a background thread some time after the
/// last handle is dropped (spacejam/sled#1289), so the log this test opened and dropped in the
/// previous round may still hold it; a writer started then fails to open the log and exits.
fn wait_until_unlocked(round: u64, dir: &Path) {
    let lock_file = dir.join("db");
    if !lock_file.exists() {
        return;
    }
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let file = File::open(&lock_file)
            .unwrap_or_else(|e| panic!("round {round}: {}: {e}", lock_file.display()));
        // Dropping `file` releases the lock taken here.
        match file.try_lock() {
            Ok(()) => return,
            Err(TryLockError::WouldBlock) => assert!(
                Instant::now() < until,
                "round {round}: {} still locked 20 s after the log was dropped",
                lock_file.display()
            ),
            Err(TryLockError::Error(e)) => {
                panic!("round {round}: lock {}: {e}", lock_file.display())
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn keep_everything() -> RetentionPolicy {
    RetentionPolicy {
        max_entries: u64::MAX,
        max_age: Duration::MAX,
    }
}

/// xorshift64: a fixed, repeatable sequence of kill delays.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
