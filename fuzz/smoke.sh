#!/usr/bin/env bash
# Runs every fuzz target for a short, fixed time on the committed corpus.
# Stable Rust: cargo-fuzz needs nightly flags, which RUSTC_BOOTSTRAP=1 allows.
# Usage: fuzz/smoke.sh [seconds per target, default 30]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
status=0
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  # New inputs go to a scratch dir so the committed corpus stays as it is.
  scratch=$(mktemp -d)
  if out=$(cargo fuzz run -O "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 2>&1); then
    echo "fuzz $target: $(printf '%s\n' "$out" | grep -E '^#[0-9]+.*DONE' | tail -1)"
  else
    printf '%s\n' "$out" | tail -40
    echo "fuzz $target: FAILED (crash input in fuzz/artifacts/$target)"
    status=1
  fi
  rm -rf "$scratch"
done
exit $status
