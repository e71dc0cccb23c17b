#!/usr/bin/env bash
# Builds the tracer and a small multi-threaded C program, records the program, and shows what was
# recorded: the session's accounting, the per-function report, and the start of one thread's call
# tree. Needs only Rust and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet -p cli
tracer="${CARGO_TARGET_DIR:-target}/release/tracer"
cc -O1 -g -pthread -finstrument-functions -o "$work/demo" examples/demo.c

echo "\$ tracer spawn --output $work/traces $work/demo"
"$tracer" spawn --output "$work/traces" "$work/demo"
session=$(ls -d "$work"/traces/session_*/pid_*)

echo; echo "\$ tracer info <session>"
"$tracer" info "$session"
echo; echo "\$ tracer report <session>"
"$tracer" report "$session"
echo; echo "\$ tracer replay --depth 4 <session> | head -40"
"$tracer" replay --depth 4 "$session" | head -40
