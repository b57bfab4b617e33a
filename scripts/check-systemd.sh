#!/usr/bin/env bash
# Checks dist/bascule.service with `systemd-analyze verify` (skipped where systemd is absent),
# against the bascule binary built by `cargo build`. Unknown keys are only warnings to systemd:
# any output counts as a failure here.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd-analyze not found: unit not checked"
  exit 0
fi
bin="$PWD/target/debug/bascule"
[[ -x "$bin" ]] || cargo build -q -p bascule-proxy --bin bascule
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/bascule#$bin#g" dist/bascule.service >"$tmp/bascule.service"
if ! out="$(systemd-analyze verify "$tmp/bascule.service" 2>&1)" || [[ -n "$out" ]]; then
  echo "dist/bascule.service: $out" >&2
  exit 1
fi
echo "dist/bascule.service: ok"
