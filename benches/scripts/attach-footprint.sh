#!/usr/bin/env bash
# What `tracer attach` leaves mapped in a running program: VmSize, VmRSS and the number of
# mappings before the first attach and after 1, 6 and 21 attaches (0.1 s each), then the size of
# every mapping of the agent and of the tracer's regions still in the program.
# Usage: bash benches/scripts/attach-footprint.sh [path/to/tracer]   (default: target/release/tracer)
set -euo pipefail
tracer=${1:-target/release/tracer}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/quiet.c" <<'C'
#include <pthread.h>
#include <unistd.h>
static volatile long sink;
__attribute__((noinline)) void leaf(long i) { sink += i; }
__attribute__((noinline)) void top(long i) { leaf(i); }
void *worker(void *arg) { (void)arg; for (long i = 0;; i++) { top(i); if ((i & 1023) == 0) usleep(1000); } return NULL; }
int main(void) { pthread_t t[2]; for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, worker, NULL); for (;;) pause(); }
C
cc -O1 -finstrument-functions -pthread -o "$work/quiet" "$work/quiet.c"
"$work/quiet" & pid=$!
sleep 0.3
show() {
    printf '%-16s VmSize %9s kB  VmRSS %6s kB  maps %3s\n' "$1" \
        "$(awk '/^VmSize/ {print $2}' /proc/$pid/status)" \
        "$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)" "$(wc -l < /proc/$pid/maps)"
}
show "before"
for round in $(seq 1 21); do
    "$tracer" attach --duration 0.1 --output "$work/out" "$pid" > /dev/null 2>&1
    rm -rf "$work/out"
    case $round in 1 | 6 | 21) show "after $round";; esac
done
echo "mapped by the tracer's agent and regions now:"
python3 - "$pid" <<'PY'
import collections, sys
sizes, counts = collections.Counter(), collections.Counter()
for line in open(f"/proc/{sys.argv[1]}/maps"):
    f = line.split()
    lo, hi = (int(x, 16) for x in f[0].split("-"))
    name = " ".join(f[5:])
    if "libagent" in name or "tracer-region" in name:
        sizes[name] += (hi - lo) // 1024
        counts[name] += 1
for name in sizes:
    print(f"  {name}: {counts[name]} mapping(s), {sizes[name]} kB")
PY
