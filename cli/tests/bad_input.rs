//! Bad input: one line on stderr naming the problem and the fix, the right exit code, no panic.
#![allow(non_snake_case)]

mod common;

use common::*;

fn assert_one_line_error(args: &[&str], code: i32, needle: &str) {
    let out = run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(err.starts_with("tracer: "), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

#[test]
fn cli__missing_executable__then_exit_2() {
    assert_one_line_error(&["spawn", "/nonexistent/app"], 2, "does not exist");
}

#[test]
fn cli__non_executable_file__then_exit_2() {
    let f = workdir().join("data.txt");
    std::fs::write(&f, "x").unwrap();
    assert_one_line_error(&["spawn", f.to_str().unwrap()], 2, "chmod +x");
}

#[test]
fn cli__32_bit_x86_program__then_exit_2_naming_the_reason_before_anything_is_written() {
    // An i386 ELF executable's header: class 32, little-endian, ET_EXEC, EM_386.
    let mut elf = vec![0u8; 64];
    elf[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
    elf[16] = 2;
    elf[18] = 3;
    let exe = workdir().join("d32");
    std::fs::write(&exe, &elf).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = workdir().join("d32-out");
    assert_one_line_error(
        &[
            "spawn",
            "--output",
            out.to_str().unwrap(),
            exe.to_str().unwrap(),
        ],
        2,
        "32-bit x86 programs are not supported",
    );
    assert!(
        !out.exists(),
        "the output directory was created for a program that cannot run"
    );
}

#[test]
fn cli__negative_or_non_numeric_duration__then_exit_2() {
    assert_one_line_error(&["spawn", "--duration", "-1", "/bin/true"], 2, "seconds");
    assert_one_line_error(&["spawn", "--duration", "soon", "/bin/true"], 2, "seconds");
}

#[test]
fn cli__stack_bytes_513__then_exit_2() {
    assert_one_line_error(
        &["spawn", "--stack-bytes", "513", "/bin/true"],
        2,
        "0 to 512",
    );
}

#[test]
fn cli__unwritable_output_directory__then_exit_2() {
    // A path under a regular file can never be a directory, even for root.
    let f = workdir().join("not-a-dir");
    std::fs::write(&f, "x").unwrap();
    let out = f.join("traces");
    assert_one_line_error(
        &["spawn", "--output", out.to_str().unwrap(), "/bin/true"],
        2,
        "--output",
    );
}

#[test]
fn cli__unknown_subcommand__then_exit_2() {
    assert_one_line_error(&["frobnicate"], 2, "frobnicate");
}

#[test]
fn cli__help__then_snapshot() {
    let out = run(&["spawn", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!("spawn_help", String::from_utf8_lossy(&out.stdout));
    let out = run(&["--help"]);
    insta::assert_snapshot!("help", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn cli__version__then_prints_version() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tracer "));
}

#[test]
fn cli__reading_a_missing_session__then_exit_2_naming_what_to_pass() {
    for command in ["info", "replay", "report"] {
        assert_one_line_error(
            &[command, "/nonexistent/session"],
            2,
            "no such session directory; pass a session_<...> or pid_<pid> directory",
        );
    }
}

#[test]
fn cli__export_to_an_uncreatable_file__then_exit_2_cause_once_then_the_fix() {
    let (_, tmp) = spawn_in_fresh_dir(&app(), &["1", "10"]);
    let session = session_dir(tmp.path());
    let file = workdir().join("not-a-dir-for-export");
    std::fs::write(&file, "x").unwrap();
    let target = file.join("trace.json");
    let out = run(&[
        "export",
        session.to_str().unwrap(),
        "--output",
        target.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot create the output file: "), "{err}");
    assert!(
        err.trim_end()
            .ends_with("; check that its directory exists and is writable"),
        "{err}"
    );
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}
