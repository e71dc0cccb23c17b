//! Names as people read them, on a real C++ program: `tracer replay` shows `ns::Class::method`
//! by default and the whole signature with `--full-names`, never a parameter list followed by an
//! added `()`, and no name is left mangled.
#![allow(non_snake_case)]

mod common;

use std::process::Command;

use common::*;

const THROWER: &str = r#"
#include <stdexcept>
#include <utility>
namespace ns {
template <class T> struct Box { T v; T get() const { return v; } };
struct Thrower {
    int level1(int x) { if (x > 5) throw std::runtime_error("deep"); return level2(x) + 1; }
    int level2(int x) { int a = x, b = 1; std::swap(a, b); return a + b; }
};
}
int main(int argc, char **) {
    ns::Thrower t;
    ns::Box<int> box{argc};
    int r = 0;
    try { r = t.level1(argc) + t.level1(argc + 10); } catch (const std::exception &) { r = 1; }
    return r + box.get() - 2;
}
"#;

#[test]
fn replay__cpp_program__then_short_names_by_default_and_signatures_with_full_names() {
    let src = workdir().join("thrower.cpp");
    std::fs::write(&src, THROWER).unwrap();
    let exe = workdir().join("thrower");
    let built = Command::new("c++")
        .args(["-O0", "-finstrument-functions", "-o"])
        .arg(&exe)
        .arg(&src)
        .output();
    match built {
        Err(e) => {
            eprintln!("skipped: no C++ compiler ({e})");
            return;
        }
        Ok(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    let tmp = output_dir();
    let out = run(&[
        "spawn",
        "--output",
        tmp.path().to_str().unwrap(),
        exe.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dir = session_dir(tmp.path());
    let replay = |extra: &[&str]| {
        let mut args = vec!["replay"];
        args.extend_from_slice(extra);
        args.push(dir.to_str().unwrap());
        let out = run(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let short = replay(&[]);
    for want in [
        "ns::Thrower::level1() {",
        "ns::Thrower::level2() {",
        "std::swap() {",
        "ns::Box::get();",
    ] {
        assert!(short.contains(want), "no {want:?} in\n{short}");
    }
    assert!(
        !short.contains(")()"),
        "an added () after a parameter list:\n{short}"
    );
    assert!(!short.contains("_Z"), "a mangled name:\n{short}");
    let full = replay(&["--full-names"]);
    for want in [
        "ns::Thrower::level1(int) {",
        "ns::Box<int>::get() const;",
        "std::swap<int>(int&, int&) {",
    ] {
        assert!(full.contains(want), "no {want:?} in\n{full}");
    }
    assert!(
        !full.contains(")()"),
        "an added () after a parameter list:\n{full}"
    );
    assert!(!full.contains("_Z"), "a mangled name:\n{full}");
}
