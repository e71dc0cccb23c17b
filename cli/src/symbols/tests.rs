//! Tests on real programs built with `cc` and `g++`: each is run, blocks reading stdin, prints the
//! addresses of its functions, and is captured from `/proc/<pid>/maps`.
#![allow(non_snake_case)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::*;

const LIB: &str = r#"
static int lib_static(int x) { return x + 2; }
int lib_fn(int x) { return lib_static(x) * 3; }
"#;

const PLUGIN: &str = r#"
int plugin_fn(int x) { return x + 7; }
"#;

/// Prints `foo local_helper lib_fn` addresses; with a plugin path argument, waits for a line,
/// dlopens it and prints `plugin_fn`'s address; then waits for stdin to close.
const PROG: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int lib_fn(int);
__attribute__((noinline)) int foo(int x) { return x + 1; }
static __attribute__((noinline)) int local_helper(int x) { return x * 2; }
int main(int argc, char **argv) {
    char c;
    printf("%p %p %p %d\n", (void *)&foo, (void *)&local_helper, (void *)&lib_fn,
           foo(1) + local_helper(2) + lib_fn(3));
    fflush(stdout);
    if (argc > 1) {
        if (read(0, &c, 1) != 1) return 1;
        void *h = dlopen(argv[1], RTLD_NOW);
        printf("%p\n", h ? dlsym(h, "plugin_fn") : NULL);
        fflush(stdout);
    }
    while (read(0, &c, 1) == 1) {}
    return 0;
}
"#;

const CPP: &str = r#"
#include <cstdio>
#include <unistd.h>
namespace ns {
struct Widget {
    int v;
    int frob(int x);
};
__attribute__((noinline)) int Widget::frob(int x) { return v + x; }
__attribute__((noinline)) int bar(int x) { return x + 1; }
__attribute__((noinline)) int bar(double x) { return (int)x + 2; }
}
int main() {
    ns::Widget w{1};
    int (*b)(int) = ns::bar;
    std::printf("%p %d\n", (void *)b, w.frob(2) + ns::bar(1) + ns::bar(1.0));
    std::fflush(stdout);
    char c;
    while (read(0, &c, 1) == 1) {}
    return 0;
}
"#;

const PLAIN: &str = "int main(void) { return 0; }\n";

/// Compiles `source` (C, or C++ if `cpp`) with `flags` into `dir/name`; `Err` with the compiler's
/// output if it fails.
fn try_build(
    dir: &Path,
    name: &str,
    source: &str,
    cpp: bool,
    flags: &[&str],
) -> Result<PathBuf, String> {
    let src = dir.join(format!("{name}.{}", if cpp { "cpp" } else { "c" }));
    fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let result = Command::new(if cpp { "g++" } else { "cc" })
        .arg("-O1")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        // After the source, so that libraries (`-l`) resolve its references.
        .args(flags)
        .output()
        .map_err(|e| format!("cannot run the compiler: {e}"))?;
    if !result.status.success() {
        return Err(String::from_utf8_lossy(&result.stderr).into_owned());
    }
    Ok(out)
}

fn build(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    try_build(dir, name, source, false, flags).unwrap_or_else(|e| panic!("cc {name}: {e}"))
}

/// `dir/libshared.so` and `dir/libplugin.so`, both instrumented.
fn build_libraries(dir: &Path) -> (PathBuf, PathBuf) {
    let flags = ["-finstrument-functions", "-fPIC", "-shared"];
    let lib = build(dir, "libshared.so", LIB, &flags);
    let plugin = build(dir, "libplugin.so", PLUGIN, &flags);
    (lib, plugin)
}

/// `dir/prog` from [`PROG`], linked against `dir/libshared.so` (see [`build_libraries`]).
fn build_prog(dir: &Path, flags: &[&str]) -> PathBuf {
    let libdir = format!("-L{}", dir.display());
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let mut all: Vec<&str> = flags.to_vec();
    all.extend_from_slice(&[&libdir, &rpath, "-lshared", "-ldl"]);
    build(dir, "prog", PROG, &all)
}

/// A running test program, killed and reaped when dropped.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    fn spawn(program: &Path, args: &[&Path]) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Running {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The addresses on the program's next output line.
    fn addresses(&mut self) -> Vec<u64> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.split_whitespace()
            .filter_map(|w| w.strip_prefix("0x"))
            .map(|h| u64::from_str_radix(h, 16).unwrap())
            .collect()
    }

    fn send_line(&mut self) {
        self.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    }

    /// Closes stdin and waits for a clean exit.
    fn finish(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn module<'a>(capture: &'a Capture, path: &Path) -> &'a LoadedModule {
    let path = path.to_str().unwrap();
    capture
        .modules
        .iter()
        .find(|m| m.path == path)
        .unwrap_or_else(|| panic!("{path} not among {:?}", capture.modules))
}

fn name_at(capture: &Capture, address: u64) -> &str {
    capture
        .function_at(address)
        .map(|f| f.name.as_str())
        .unwrap_or("<none>")
}

/// Runs `exe` (linked against `libshared.so`) and checks every address it prints.
fn check_program_resolves(flags: &[&str], expect_pie: bool) {
    let dir = tempfile::tempdir().unwrap();
    build_libraries(dir.path());
    let mut all_flags = vec!["-finstrument-functions"];
    all_flags.extend_from_slice(flags);
    let exe = build_prog(dir.path(), &all_flags);

    let mut run = Running::spawn(&exe, &[]);
    let addrs = run.addresses();
    assert_eq!(addrs.len(), 3, "{addrs:x?}");
    let capture = capture(run.pid()).unwrap();

    assert_eq!(name_at(&capture, addrs[0]), "foo");
    assert_eq!(name_at(&capture, addrs[1]), "local_helper");
    assert_eq!(name_at(&capture, addrs[2]), "lib_fn");
    assert_eq!(capture.resolve("foo"), [addrs[0]]);
    // In a non-PIC executable `&lib_fn` is a canonical PLT entry, which becomes lib_fn's address
    // everywhere (the library's own `this_fn` included); both addresses carry the name.
    assert!(capture.resolve("lib_fn").contains(&addrs[2]));
    assert_eq!(capture.resolve("no_such_function"), Vec::<u64>::new());

    let prog = module(&capture, &exe);
    assert!(prog.instrumented);
    assert_eq!(prog.bias != 0, expect_pie, "bias {:#x}", prog.bias);
    assert!(prog.base <= addrs[0] && addrs[0] < prog.base + prog.size);
    assert!(
        !prog.build_id.is_empty(),
        "gcc writes a build id by default"
    );
    assert!(module(&capture, &dir.path().join("libshared.so")).instrumented);
    let libc = capture
        .modules
        .iter()
        .find(|m| m.path.contains("libc.so"))
        .expect("libc is listed as a module");
    assert!(!libc.instrumented && libc.functions.is_empty());

    let symbols = capture.manifest_symbols();
    let foo = symbols.iter().find(|s| s.name == "foo").unwrap();
    assert_eq!(foo.function_id, format!("0x{:016x}", addrs[0]));
    assert_eq!(foo.function_id(), Some(addrs[0]));
    assert_eq!(foo.module_id, atf::module_id(exe.to_str().unwrap()));
    let mut manifest = atf::Manifest::new(atf::ClockType::Boottime);
    capture.fill_manifest(&mut manifest);
    assert_eq!(manifest.modules.len(), capture.modules.len());
    assert_eq!(manifest.symbols, symbols);
    assert_eq!(
        super::capture(run.pid()).unwrap().resolve("foo"),
        [addrs[0]]
    );
    run.finish();
}

#[test]
fn capture__pie_executable__then_runtime_addresses_resolve_to_names() {
    check_program_resolves(&["-fPIE", "-pie"], true);
}

#[test]
fn capture__non_pie_executable__then_zero_bias_and_names_resolve() {
    check_program_resolves(&["-fno-PIE", "-no-pie"], false);
}

#[test]
fn rescan__library_loaded_with_dlopen__then_its_functions_appear_and_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (_, plugin) = build_libraries(dir.path());
    let exe = build_prog(dir.path(), &["-finstrument-functions"]);

    let mut run = Running::spawn(&exe, &[&plugin]);
    run.addresses();
    let mut capture = capture(run.pid()).unwrap();
    assert!(capture.resolve("plugin_fn").is_empty(), "not loaded yet");
    let modules_before = capture.modules.len();

    run.send_line();
    let plugin_fn = run.addresses();
    assert_eq!(plugin_fn.len(), 1);
    assert!(capture.rescan().unwrap() >= 1);
    assert_eq!(capture.resolve("plugin_fn"), plugin_fn);
    assert_eq!(name_at(&capture, plugin_fn[0]), "plugin_fn");
    assert!(module(&capture, &plugin).instrumented);
    assert_eq!(capture.rescan().unwrap(), 0, "nothing new");

    let pid = run.pid();
    run.finish();
    let after = capture.clone();
    assert!(matches!(
        Capture::rescan(&mut capture),
        Err(SymbolError::NoProcess { pid: p }) if p == pid
    ));
    assert_eq!(capture, after, "a failed rescan keeps everything");
    assert!(capture.modules.len() > modules_before);
}

#[test]
fn merge__same_module_twice__then_listed_once() {
    let module = |path: &str, base| LoadedModule {
        path: path.to_owned(),
        module_id: atf::module_id(path),
        base,
        size: 0x1000,
        bias: base,
        build_id: String::new(),
        instrumented: false,
        functions: Vec::new(),
        got_entries: Vec::new(),
    };
    let mut a = Capture {
        pid: 1,
        modules: vec![module("/a", 0x2000)],
        skipped: Vec::new(),
    };
    let b = Capture {
        pid: 1,
        modules: vec![
            module("/b", 0x1000),
            module("/a", 0x2000),
            module("/a", 0x9000),
        ],
        skipped: Vec::new(),
    };
    a.merge(b);
    let listed: Vec<(&str, u64)> = a
        .modules
        .iter()
        .map(|m| (m.path.as_str(), m.base))
        .collect();
    assert_eq!(listed, [("/b", 0x1000), ("/a", 0x2000), ("/a", 0x9000)]);
}

#[test]
fn capture__cpp_program__then_names_demangled_and_resolvable() {
    let dir = tempfile::tempdir().unwrap();
    let exe = match try_build(dir.path(), "widget", CPP, true, &["-finstrument-functions"]) {
        Ok(exe) => exe,
        Err(e) if e.starts_with("cannot run the compiler") => {
            eprintln!("skipped: g++ is not installed ({e})");
            return;
        }
        Err(e) => panic!("g++: {e}"),
    };
    let mut run = Running::spawn(&exe, &[]);
    let bar_int = run.addresses()[0];
    let capture = capture(run.pid()).unwrap();

    assert_eq!(name_at(&capture, bar_int), "ns::bar(int)");
    assert_eq!(capture.resolve("ns::bar(int)"), [bar_int]);
    assert_eq!(capture.resolve("_ZN2ns3barEi"), [bar_int]);
    assert_eq!(capture.resolve("ns::bar").len(), 2, "both overloads");
    let frob = capture.resolve("ns::Widget::frob(int)");
    assert_eq!(frob.len(), 1);
    assert_eq!(capture.resolve("_ZN2ns6Widget4frobEi"), frob);
    assert_eq!(name_at(&capture, frob[0]), "ns::Widget::frob(int)");
    run.finish();
}

#[test]
fn capture__no_such_process__then_error_names_pid_and_fix() {
    let err = capture(999_999_999).unwrap_err();
    assert!(matches!(err, SymbolError::NoProcess { pid: 999_999_999 }));
    assert_eq!(
        err.to_string(),
        "no process with pid 999999999 (it may have exited); check the pid with `ps`"
    );
    assert!(err.is_usage());
}

#[test]
fn capture__own_process__then_rust_functions_not_listed_because_not_instrumented() {
    let capture = capture(std::process::id()).unwrap();
    assert!(!capture.modules.is_empty());
    assert!(!capture.instrumented());
    assert_eq!(capture.functions().count(), 0);
}

fn inspect_kind(path: &Path) -> ExeKind {
    inspect_executable(path).unwrap().kind
}

#[test]
fn inspect_executable__instrumented_pie__then_traceable() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(
        dir.path(),
        "app",
        PLAIN,
        &["-finstrument-functions", "-fPIE", "-pie"],
    );
    let info = inspect_executable(&exe).unwrap();
    assert!(info.traceable(), "{info:?}");
    assert_eq!(info.problem(), None);
    assert!(matches!(
        info.kind,
        ExeKind::Elf {
            interpreter: Some(_),
            pie: true,
            instrumented: true,
            ..
        }
    ));
}

#[test]
fn inspect_executable__plain_binary__then_not_instrumented_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "plain", PLAIN, &["-no-pie"]);
    let info = inspect_executable(&exe).unwrap();
    assert!(!info.traceable());
    assert!(matches!(
        info.kind,
        ExeKind::Elf {
            interpreter: Some(_),
            pie: false,
            instrumented: false,
            ..
        }
    ));
    assert_eq!(
        info.problem().unwrap(),
        format!(
            "{} was not built for call tracing; rebuild it with {BUILD_MODES}",
            exe.display()
        )
    );
}

#[test]
fn inspect_executable__static_binary__then_static_and_preload_cannot_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let exe = match try_build(
        dir.path(),
        "static",
        PLAIN,
        false,
        &["-static", "-finstrument-functions"],
    ) {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!(
                "skipped: cannot link statically (is the static libc, libc6-dev, installed?): {e}"
            );
            return;
        }
    };
    let info = inspect_executable(&exe).unwrap();
    assert!(matches!(
        info.kind,
        ExeKind::Elf {
            interpreter: None,
            instrumented: true,
            ..
        }
    ));
    assert!(!info.traceable());
    let problem = info.problem().unwrap();
    assert!(problem.contains("is statically linked"), "{problem}");
    assert!(problem.contains("LD_PRELOAD"), "{problem}");
}

#[test]
fn inspect_executable__shell_script__then_names_its_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("run.sh");
    fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
    assert_eq!(
        inspect_kind(&script),
        ExeKind::Script {
            interpreter: "/bin/sh".to_owned(),
            args: "-e".to_owned()
        }
    );
    let env = dir.path().join("run.py");
    fs::write(&env, "#! /usr/bin/env python3\n").unwrap();
    assert_eq!(
        inspect_kind(&env),
        ExeKind::Script {
            interpreter: "/usr/bin/env".to_owned(),
            args: "python3".to_owned()
        }
    );
}

#[test]
fn inspect_executable__not_an_elf__then_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    fs::write(&text, "hello\n").unwrap();
    assert_eq!(inspect_kind(&text), ExeKind::Unknown);
    let empty = dir.path().join("empty");
    fs::write(&empty, "").unwrap();
    assert_eq!(inspect_kind(&empty), ExeKind::Unknown);
}

#[test]
fn inspect_executable__other_machine_or_object_file__then_other_elf() {
    let dir = tempfile::tempdir().unwrap();
    // A 64-bit little-endian ELF header for aarch64 (EM 183), then a 32-bit i386 one.
    let mut arm = vec![0u8; 64];
    arm[..4].copy_from_slice(b"\x7fELF");
    arm[4] = 2;
    arm[5] = 1;
    arm[16] = 2;
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    let path = dir.path().join("arm");
    fs::write(&path, &arm).unwrap();
    assert_eq!(
        inspect_kind(&path),
        ExeKind::OtherElf {
            class_bits: 64,
            machine: 183,
            e_type: None
        }
    );
    let mut i386 = arm.clone();
    i386[4] = 1;
    i386[18..20].copy_from_slice(&3u16.to_le_bytes());
    fs::write(&path, &i386).unwrap();
    assert_eq!(
        inspect_kind(&path),
        ExeKind::OtherElf {
            class_bits: 32,
            machine: 3,
            e_type: None
        }
    );

    let reason = inspect_executable(&path).unwrap().unsupported().unwrap();
    assert!(
        reason.ends_with(
            "32-bit x86 programs are not supported; rebuild it for x86-64 (without -m32)"
        ),
        "{reason}"
    );
    fs::write(&path, &arm).unwrap();
    let reason = inspect_executable(&path).unwrap().unsupported().unwrap();
    assert!(
        reason.contains("64-bit arm64 (aarch64) programs are not supported"),
        "{reason}"
    );

    let obj = build(dir.path(), "unit.o", PLAIN, &["-c"]);
    assert!(inspect_executable(&obj).unwrap().unsupported().is_some());
    assert_eq!(
        inspect_kind(&obj),
        ExeKind::OtherElf {
            class_bits: 64,
            machine: 62,
            e_type: Some(object::elf::ET_REL)
        }
    );
}

#[test]
fn inspect_executable__missing_or_truncated__then_error_names_file_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = inspect_executable(&missing).unwrap_err();
    assert!(err.is_usage());
    let msg = crate::error::CliError::from(err).render();
    assert!(
        msg.starts_with(&format!("cannot read {}:", missing.display())),
        "{msg}"
    );
    assert!(msg.ends_with("; check the path"), "{msg}");
    assert_eq!(msg.matches("os error").count(), 1, "{msg}");

    let exe = build(dir.path(), "app", PLAIN, &[]);
    let bytes = fs::read(&exe).unwrap();
    let cut = dir.path().join("cut");
    fs::write(&cut, &bytes[..100]).unwrap();
    let msg = inspect_executable(&cut).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("{}: malformed ELF file", cut.display())),
        "{msg}"
    );
}

#[test]
fn problem__every_kind__then_one_line_naming_the_fix() {
    let info = |kind| ExeInfo {
        path: PathBuf::from("/opt/app"),
        kind,
    };
    let elf = |interpreter: Option<&str>, instrumented| ExeKind::Elf {
        interpreter: interpreter.map(str::to_owned),
        pie: true,
        instrumented,
        build_id: String::new(),
    };
    let kinds = [
        elf(Some("/lib64/ld-linux-x86-64.so.2"), true),
        elf(Some("/lib64/ld-linux-x86-64.so.2"), false),
        elf(None, true),
        elf(None, false),
        ExeKind::OtherElf {
            class_bits: 64,
            machine: 183,
            e_type: None,
        },
        ExeKind::OtherElf {
            class_bits: 32,
            machine: 3,
            e_type: None,
        },
        ExeKind::OtherElf {
            class_bits: 64,
            machine: 62,
            e_type: Some(object::elf::ET_REL),
        },
        ExeKind::Script {
            interpreter: "/bin/sh".to_owned(),
            args: String::new(),
        },
        ExeKind::Script {
            interpreter: "/usr/bin/env".to_owned(),
            args: "python3".to_owned(),
        },
        ExeKind::Unknown,
    ];
    let lines: Vec<String> = kinds
        .into_iter()
        .map(|k| {
            info(k)
                .problem()
                .unwrap_or_else(|| "(traceable)".to_owned())
        })
        .collect();
    assert!(lines.iter().all(|l| !l.contains('\n')));
    insta::assert_snapshot!(lines.join("\n"));
}

#[test]
fn symbol_error__every_variant__then_one_line_naming_the_fix() {
    let os = std::io::Error::from_raw_os_error;
    let errors = [
        SymbolError::NoProcess { pid: 42 },
        SymbolError::Proc {
            pid: 42,
            source: os(libc::EACCES),
        },
        SymbolError::Proc {
            pid: 42,
            source: os(libc::EIO),
        },
        SymbolError::Open {
            path: "/opt/app".into(),
            source: os(libc::ENOENT),
        },
        SymbolError::Open {
            path: "/opt/app".into(),
            source: os(libc::EACCES),
        },
        SymbolError::Malformed {
            path: "/opt/app".into(),
            reason: "Invalid ELF header size or alignment".to_owned(),
        },
    ];
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| crate::error::CliError::from(e).render())
        .collect();
    assert!(lines.iter().all(|l| !l.contains('\n')));
    insta::assert_snapshot!(lines.join("\n"));
}

#[test]
fn demangle__rust_legacy_and_v0__then_paths_without_hash() {
    assert_eq!(
        demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
        "core::fmt::write"
    );
    assert_eq!(
        demangle("_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17h6d2b26f3a3c2a0b4E"),
        "std::rt::lang_start::{{closure}}"
    );
    assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
    assert_eq!(
        demangle("_RNvNtCs1234_7mycrate6module4func"),
        "mycrate::module::func"
    );
}

#[test]
fn demangle__cpp_and_c__then_cpp_demangled_c_unchanged() {
    assert_eq!(demangle("_ZN2ns6Widget4frobEi"), "ns::Widget::frob(int)");
    assert_eq!(demangle("_ZN2ns3barEv"), "ns::bar()");
    assert_eq!(demangle("_Z3fooPKc"), "foo(char const*)");
    assert_eq!(demangle("main"), "main");
    assert_eq!(demangle("_Zgarbage"), "_Zgarbage");
}

#[test]
fn strip_params__names__then_parameter_list_removed() {
    assert_eq!(strip_params("ns::bar(int)"), Some("ns::bar"));
    assert_eq!(
        strip_params("ns::apply(void (*)(int), int)"),
        Some("ns::apply")
    );
    assert_eq!(strip_params("ns::Widget::frob(int) const"), None);
    assert_eq!(strip_params("main"), None);
    assert_eq!(strip_params("(anonymous)"), None);
}

/// Figures for the report, not a check (no timed assertions): how long a capture of a small
/// instrumented program takes. `cargo test -p cli --release -- --ignored --nocapture
/// capture__timing`.
#[test]
#[ignore]
fn capture__timing() {
    let dir = tempfile::tempdir().unwrap();
    build_libraries(dir.path());
    let exe = build_prog(dir.path(), &["-g", "-finstrument-functions"]);
    let mut run = Running::spawn(&exe, &[]);
    run.addresses();
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = std::time::Instant::now();
        let c = capture(run.pid()).unwrap();
        times.push(t.elapsed());
        assert!(c.instrumented());
    }
    let mut c = capture(run.pid()).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..50 {
        c.rescan().unwrap();
    }
    let rescan = t.elapsed() / 50;
    times.sort();
    eprintln!(
        "capture of {} modules: p50 {:?}, max {:?}; rescan with nothing new: {:?}",
        c.modules.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        rescan
    );
    run.finish();
}

/// A C++ program whose symbols exercise the demangler: variadic templates, `enable_if` in a
/// return type, lambdas, operators, the standard containers.
const CPP_NAMES: &str = r#"
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>
namespace ns {
struct Thrower { int level1(int x) { if (x > 5) throw std::runtime_error("x"); return x + 1; } };
template <class T> struct Box {
    T v;
    T get() const { return v; }
    bool operator<(const Box& o) const { return v < o.v; }
};
}
int main(int argc, char**) {
    int a = 1, b = 2;
    std::swap(a, b);
    std::vector<std::string> v;
    v.push_back("x");
    std::map<int, std::string> m;
    m[1] = "y";
    ns::Thrower t;
    ns::Box<int> x{a}, y{b};
    auto l = [&](int q) { return q + argc; };
    try { t.level1(argc + l(3)); } catch (...) {}
    return (x < y) + x.get();
}
"#;

#[test]
fn demangle__every_symbol_of_a_real_cpp_program__then_same_as_cxxfilt() {
    let dir = tempfile::tempdir().unwrap();
    let exe = match try_build(dir.path(), "names", CPP_NAMES, true, &["-O0"]) {
        Ok(exe) => exe,
        Err(e) if e.starts_with("cannot run the compiler") => {
            eprintln!("skipped: g++ is not installed ({e})");
            return;
        }
        Err(e) => panic!("g++: {e}"),
    };
    let data = std::fs::read(&exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    use object::{Object, ObjectSymbol};
    let mut names: Vec<String> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .filter(|n| n.starts_with("_Z"))
        .collect();
    names.sort();
    names.dedup();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("_ZSt4swapIiENSt9enable_if")),
        "{names:?}"
    );
    let filt = Command::new("c++filt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let Ok(mut filt) = filt else {
        eprintln!("skipped the comparison: c++filt is not installed");
        return;
    };
    let mut input = filt.stdin.take().unwrap();
    input.write_all(names.join("\n").as_bytes()).unwrap();
    input.write_all(b"\n").unwrap();
    drop(input);
    let output = filt.wait_with_output().unwrap();
    let expected: Vec<&str> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .collect();
    assert_eq!(expected.len(), names.len());
    let differ: Vec<String> = names
        .iter()
        .zip(&expected)
        .filter(|(n, e)| demangle(n) != **e)
        .map(|(n, e)| format!("{n}\n  ours:     {}\n  c++filt:  {e}", demangle(n)))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} differ:\n{}",
        differ.len(),
        names.len(),
        differ.join("\n")
    );
}

#[test]
fn plt_entries__program_calling_libc__then_its_plt_entries_and_none_with_no_plt() {
    let dir = tempfile::tempdir().unwrap();
    let source = "#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf(\"%d\\n\", getpid()); return 0; }\n";
    let with_plt = build(dir.path(), "calls", source, &["-fno-builtin"]);
    let (lowest, entries) = plt_entries(&with_plt).unwrap();
    assert!(!entries.is_empty(), "printf and getpid go through the PLT");
    assert!(entries
        .iter()
        .all(|&a| a > lowest && (a - entries[0]) % 16 == 0));
    let no_plt = build(dir.path(), "no_plt", source, &["-fno-builtin", "-fno-plt"]);
    assert_eq!(plt_entries(&no_plt).unwrap().1, Vec::<u64>::new());
}
