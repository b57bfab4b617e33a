#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Bascule: cmake (Pingora builds zlib-ng
# with it), a C toolchain, protoc, etcd, h2load and testssl. With --bench, also nginx and wrk
# for the side-by-side benchmarks.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# The TLS tests drive HTTP/2 with curl (they skip without it).
command -v curl >/dev/null 2>&1 || need+=(curl)
# etcd-client generates its gRPC code with protoc at build time.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# The cluster tests start a real etcd; the TLS tests drive h2 with h2load and audit with testssl.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v testssl >/dev/null 2>&1 || need+=(testssl.sh)
if [[ "${1:-}" == "--bench" ]]; then
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
fi
if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || {
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
}
