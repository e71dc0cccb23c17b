//! Floating-point arguments and return values travel in `xmm0`–`xmm7`, which the entry-only
//! hooks (`mcount`, `__fentry__`, a patched sled's entry, a library-call stub) and the return
//! trampoline save only when their fast path declines. A program whose hooked functions take
//! eight doubles and return one, and that calls `ldexp` from libm through its GOT, must compute
//! exactly what it computes untraced, in every build mode, with every call recorded.

#![allow(non_snake_case)]

mod common;

use common::*;

/// `floats`: 1000 rounds of `half(mix(i, 1..7))` and `ldexp(i, 1)`; prints the sums.
const FLOATS_C: &str = r#"
#include <math.h>
#include <stdio.h>
__attribute__((noinline)) double mix(double a, double b, double c, double d, double e, double f,
                                     double g, double h) {
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h;
}
__attribute__((noinline)) double half(double x) { return x / 2; }
int main(void) {
    volatile double s = 0, r = 0;
    for (int i = 0; i < 1000; i++) {
        s += half(mix(i, 1, 2, 3, 4, 5, 6, 7));
        r += ldexp(i, 1);
    }
    printf("done %.1f %.1f\n", s, r);
    return 0;
}
"#;

/// What the program prints: sum of (i + 168) / 2 and of 2i, for i < 1000.
const EXPECTED: &str = "done 333750.0 999000.0";

fn traced_output(name: &str, flags: &[&str]) -> (String, Vec<ThreadTrace>) {
    let mut all = vec!["-O2"];
    all.extend_from_slice(flags);
    // A call of `ldexp`, never an inlined expansion.
    all.extend(["-fno-builtin", "-lm"]);
    let exe = build(name, FLOATS_C, &all);
    let untraced = std::process::Command::new(&exe).output().expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&untraced.stdout).trim(),
        EXPECTED,
        "untraced"
    );
    // Library calls too, whatever the test environment's default.
    let tmp = output_dir();
    let out = tracer()
        .env_remove("TRACER_LIBRARY_CALLS")
        .current_dir(tmp.path())
        .args(["spawn", "--library-calls", "main", "-o"])
        .arg(tmp.path())
        .arg(&exe)
        .output()
        .expect("the tracer runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (_, traces) = check_session(&session_dir(tmp.path()));
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        traces,
    )
}

fn check(name: &str, flags: &[&str], instrumented: bool) {
    let (stdout, traces) = traced_output(name, flags);
    assert_eq!(
        stdout, EXPECTED,
        "{name}: the traced program computed otherwise"
    );
    let count = |f: &str| {
        traces
            .iter()
            .map(|t| t.by_name.get(f).copied().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(count("ldexp"), 1000, "{name}: library calls: {traces:?}");
    if instrumented {
        // `mix` and `half` (named by an address inside them in some modes): 1000 calls each.
        let hooked = traces
            .iter()
            .flat_map(|t| &t.by_name)
            .filter(|(f, n)| f.as_str() != "ldexp" && **n == 1000)
            .count();
        assert_eq!(hooked, 2, "{name}: hooked calls: {traces:?}");
    }
}

#[test]
fn pg__double_arguments_and_results__then_the_same_as_untraced() {
    check("floats_pg", &["-pg"], true);
}

#[test]
fn mfentry__double_arguments_and_results__then_the_same_as_untraced() {
    check("floats_fentry", &["-pg", "-mfentry"], true);
}

#[test]
fn patchable__double_arguments_and_results__then_the_same_as_untraced() {
    check("floats_patchable", &["-fpatchable-function-entry=5"], true);
}

#[test]
fn library_calls__double_arguments_through_the_got__then_the_same_as_untraced() {
    // Built without instrumentation: only the library calls are traced.
    check("floats_plain", &[], false);
}
