//! Detail records (registers and stack bytes) of real programs, shown by `tracer replay` next
//! to their calls: the window a trigger keeps, and the last window of a program that crashes.

#![allow(non_snake_case)]

mod common;

use common::*;

/// The lines of `tracer replay <dir>`, asserting it succeeded without warnings.
fn replay(dir: &std::path::Path) -> Vec<String> {
    let out = run(&["replay", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("# warning"), "{text}");
    text.lines().map(str::to_owned).collect()
}

/// `rdi <address of name>` as the detail block prints it: at the hook's entry `rdi` holds the
/// address of the instrumented function.
fn rdi_of(dir: &std::path::Path, name: &str) -> String {
    let session = atf::Session::open(dir).unwrap();
    let (id, _) = function_names(&session)
        .into_iter()
        .find(|(_, n)| n == name)
        .unwrap_or_else(|| panic!("no {name} in the manifest"));
    format!("rdi {id:016x}")
}

/// The comment block that follows the first line containing `call`, up to its end.
fn block_after<'a>(lines: &'a [String], call: &str) -> Vec<&'a str> {
    let at = lines
        .iter()
        .position(|l| l.contains(call))
        .unwrap_or_else(|| panic!("no {call} in {lines:#?}"));
    lines[at + 1..]
        .iter()
        .map(String::as_str)
        .skip_while(|l| !l.contains("/* detail of"))
        .take_while(|l| !l.ends_with(" */"))
        .collect()
}

#[test]
fn replay__trigger_on_a_real_program__then_registers_and_stack_under_the_triggering_call() {
    let tmp = output_dir();
    let out = run(&[
        "spawn",
        "--trigger",
        "symbol=mid",
        "--output",
        tmp.path().to_str().unwrap(),
        app().to_str().unwrap(),
        "--",
        "1",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dir = session_dir(tmp.path());
    let lines = replay(&dir);
    let block = block_after(&lines, "mid() {");
    assert!(!block.is_empty(), "no detail under mid: {lines:#?}");
    let text = block.join("\n");
    assert!(text.contains("/* detail of the call ("), "{text}");
    let want = rdi_of(&dir, "mid");
    assert!(text.contains(&want), "{want} in {text}");
    assert!(text.contains("in mid, called from top+0x"), "{text}");
    assert!(text.contains("stack: "), "{text}");
    assert!(text.contains("ret "), "{text}");
}

#[test]
fn replay__program_crashes_with_detail__then_the_last_window_shown_under_its_calls() {
    let tmp = output_dir();
    let out = run(&[
        "spawn",
        "--detail",
        "--output",
        tmp.path().to_str().unwrap(),
        app().to_str().unwrap(),
        "--",
        "1",
        "100",
        "crash",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("SIGSEGV"), "{}", stderr(&out));
    let dir = session_dir(tmp.path());
    let lines = replay(&dir);
    let text = lines.join("\n");
    assert!(
        text.contains("(the window open when the recording ended)"),
        "{text}"
    );
    // The crashing thread's last calls are shown with their registers and stack.
    let last_top = lines
        .iter()
        .rposition(|l| l.contains("top() {") || l.contains("top();"))
        .expect("a call of top");
    let after: String = lines[last_top..].join("\n");
    assert!(after.contains(&rdi_of(&dir, "top")), "{after}");
    assert!(after.contains("stack: "), "{after}");
}
