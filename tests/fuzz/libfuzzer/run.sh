#!/usr/bin/env bash
# Coverage-guided fuzzing of one target with libFuzzer, on the stable toolchain.
#
#   tests/fuzz/libfuzzer/run.sh TARGET [libFuzzer options...]   e.g. -runs=10000000 -jobs=2
#   tests/fuzz/libfuzzer/run.sh --build                          build every target
#
# The working corpus grows in target/fuzz-corpus/TARGET (seeded from tests/fuzz/corpus/TARGET);
# inputs that crash are written to target/fuzz-findings/TARGET/. Keep one as a regression input
# by moving it into tests/fuzz/regressions/TARGET/ with its fix: `cargo test -p defect-fuzz`
# replays it from then on.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$root/target/libfuzzer"
# Coverage instrumentation (SanitizerCoverage) through stable codegen options; the target
# triple keeps these flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"

cargo build --manifest-path "$here/Cargo.toml" --release --target "$host" --bins
[ "${1:-}" = "--build" ] && exit 0

target="${1:?usage: run.sh TARGET [libFuzzer options...]}"
shift
case "$target" in
  frame_decode) max_len=65536 ;;
  agent_config|bundle) max_len=16384 ;;
  manifest|updater_config|trust_state) max_len=8192 ;;
  capture_receiver) max_len=4096 ;;
  approval) max_len=1024 ;;
  line_state) max_len=512 ;;
  *) echo "unknown target $target (see tests/fuzz/src/lib.rs)" >&2; exit 2 ;;
esac
corpus="$root/target/fuzz-corpus/$target"
findings="$root/target/fuzz-findings/$target"
mkdir -p "$corpus" "$findings"
# The trust-state and capture targets write files with fsync: a tmpfs keeps that cheap.
[ -d /dev/shm ] && export TMPDIR="${TMPDIR:-/dev/shm}"
# The regression inputs are not given to libFuzzer: some make a decoder panic, which the product
# catches (an unreadable frame) but libFuzzer's panic hook turns into an abort at start-up. The
# bounded pass replays them instead.
exec "$CARGO_TARGET_DIR/$host/release/$target" -max_len="$max_len" -rss_limit_mb=4096 \
  -artifact_prefix="$findings/" "$@" "$corpus" "$here/../corpus/$target"
