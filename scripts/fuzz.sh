#!/usr/bin/env bash
# Runs each cargo-fuzz target for a few seconds (default 10): the request-head policy, upstream
# response heads and chunked framing, and static path resolution. The toolchain here is stable;
# cargo-fuzz's sanitizer flags are nightly-only, which RUSTC_BOOTSTRAP allows for this build.
set -euo pipefail
cd "$(dirname "$0")/../proxy/fuzz"
secs="${1:-10}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
for target in request_head response resolve; do
  echo "== fuzz $target (${secs}s)"
  log="$(mktemp)"
  if ! cargo fuzz run -O "$target" -- -max_total_time="$secs" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz $target failed (a crash is kept in proxy/fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E "^Done" "$log"
  rm -f "$log"
done
