//! Symbol names as people read them, for a tracer's output. [`demangle`] decodes a symbol completely (Rust's legacy and
//! v0 forms, C++'s Itanium form with clone suffixes such as `.cold` or `.isra.0`), giving the full
//! signature that goes into the manifest; [`short_name`] turns such a signature into the short
//! form the readers show by default, like uftrace: `ns::Class::method`, without return type,
//! template arguments, parameter list or qualifiers.
//!
//! C++ names are decoded by the C++ runtime's own demangler (`__cxa_demangle` from
//! `libstdc++.so.6`, the code `c++filt` uses) when that library is installed, because the
//! `cpp_demangle` crate rejects some valid names (an unresolved name such as
//! `std::enable_if<...>::type` in a return type) and drops the parameters of expanded parameter
//! packs; `cpp_demangle` is the fallback where the runtime is missing.
//!
//! ```
//! assert_eq!(symname::demangle("_ZN2ns6Widget4frobEi"), "ns::Widget::frob(int)");
//! assert_eq!(symname::short_name(&symname::demangle("_ZN2ns6Widget4frobEi")), "ns::Widget::frob");
//! assert_eq!(symname::demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
//! ```

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::OnceLock;

/// A demangled symbol name: Rust (legacy `_ZN..17h<hash>E` and v0 `_R..`, printed without the
/// hash), then C++ (`_Z..`); anything else as it is. A symbol version (`@GLIBCXX_3.4`,
/// `@@VERS_1`) is kept after the decoded name, as `c++filt` does.
pub fn demangle(name: &str) -> String {
    match name.find('@') {
        Some(at) if at > 0 => format!("{}{}", demangle_base(&name[..at]), &name[at..]),
        _ => demangle_base(name),
    }
}

fn demangle_base(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        // C++ names also start with `_ZN`; the Rust demangler accepts only Rust's own forms
        // (a v0 name, or a legacy path whose last segment is the hash).
        let rust_v0 = name.starts_with("_R");
        let with_hash = format!("{d}");
        let without_hash = format!("{d:#}");
        if rust_v0 || with_hash != without_hash {
            return without_hash;
        }
    }
    if name.starts_with("_Z") {
        if let Some(s) = cxa_demangle(name) {
            return s;
        }
        if let Ok(sym) = cpp_demangle::Symbol::new(name.as_bytes()) {
            if let Ok(s) = sym.demangle(&cpp_demangle::DemangleOptions::default()) {
                return s;
            }
        }
    }
    name.to_owned()
}

/// `char *__cxa_demangle(const char *mangled, char *buf, size_t *len, int *status)`.
type CxaDemangle =
    unsafe extern "C" fn(*const c_char, *mut c_char, *mut usize, *mut c_int) -> *mut c_char;

/// The C++ runtime's demangler, loaded once; `None` if `libstdc++.so.6` is not installed.
fn cxa() -> Option<CxaDemangle> {
    static CXA: OnceLock<Option<CxaDemangle>> = OnceLock::new();
    *CXA.get_or_init(|| {
        // SAFETY: dlopen and dlsym take NUL-terminated strings; the library stays loaded (never
        // dlclosed), so the function pointer stays valid for the life of the process.
        unsafe {
            let lib = libc::dlopen(
                c"libstdc++.so.6".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL,
            );
            if lib.is_null() {
                return None;
            }
            let f = libc::dlsym(lib, c"__cxa_demangle".as_ptr());
            if f.is_null() {
                return None;
            }
            Some(std::mem::transmute::<*mut libc::c_void, CxaDemangle>(f))
        }
    })
}

fn cxa_demangle(name: &str) -> Option<String> {
    let f = cxa()?;
    let c = CString::new(name).ok()?;
    let mut status: c_int = -1;
    // SAFETY: `c` is NUL-terminated; a null buffer asks the demangler to malloc the result,
    // which is freed below after copying; `status` is a valid out-pointer.
    unsafe {
        let out = f(
            c.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut status,
        );
        if out.is_null() {
            return None;
        }
        let s = (status == 0).then(|| CStr::from_ptr(out).to_string_lossy().into_owned());
        libc::free(out.cast());
        s
    }
}

/// The short form of a demangled name: `ns::Class::method` for
/// `std::enable_if<true, void>::type ns::Class<int>::method<char>(int, char) const [clone .cold]`.
/// Names that are not C++ signatures (C, Rust, an address) come back unchanged.
///
/// ```
/// use symname::short_name;
/// assert_eq!(short_name("ns::Widget::frob(int)"), "ns::Widget::frob");
/// assert_eq!(short_name("ns::Box<int>::operator<(ns::Box<int> const&) const"), "ns::Box::operator<");
/// assert_eq!(short_name("main"), "main");
/// ```
pub fn short_name(full: &str) -> String {
    let mut s = full.trim_end();
    // Clone suffixes and qualifiers after the parameter list.
    loop {
        let before = s;
        if let Some(i) = s.rfind(" [clone ").filter(|_| s.ends_with(']')) {
            s = &s[..i];
        }
        for q in [" const", " volatile", " &&", " &", " noexcept"] {
            if let Some(rest) = s.strip_suffix(q) {
                s = rest;
            }
        }
        if s == before {
            break;
        }
    }
    // Only a name ending with a parameter list is a C++ signature.
    let Some(open) = s.strip_suffix(')').and_then(|_| matching_open(s)) else {
        return full.to_owned();
    };
    let name = &s[..open];
    // The qualified name starts after the last top-level space before its `operator` keyword
    // (or its end): what precedes is a return type.
    let tokens = scan(name);
    let anchor = tokens
        .iter()
        .find(|t| t.operator_at)
        .map_or(name.len(), |t| t.at);
    let start = tokens
        .iter()
        .rev()
        .find(|t| t.depth == 0 && t.ch == ' ' && t.at < anchor)
        .map(|t| t.at + 1)
        .unwrap_or(0);
    // Drop top-level template argument lists.
    let mut out = String::with_capacity(name.len() - start);
    for t in tokens.iter().filter(|t| t.at >= start) {
        let inside_template = t.angle > 0 || (t.ch == '>' && t.closes_angle);
        if !inside_template {
            out.push(t.ch);
        }
    }
    // ABI tags (`name[abi:cxx11]`) are part of the mangling, not of the name people write.
    while let Some(i) = out.find("[abi:") {
        match out[i..].find(']') {
            Some(j) => out.replace_range(i..i + j + 1, ""),
            None => break,
        }
    }
    let out = out.trim_end().to_owned();
    // A function returning a function pointer (`int (*f(int))(int)`) has no simpler form.
    if out.is_empty() || out.starts_with("(*") {
        full.to_owned()
    } else {
        out
    }
}

/// One character of a name with what surrounds it.
struct Tok {
    at: usize,
    ch: char,
    /// Nesting in `()`, `[]`, `{}` and `<>` before this character (0 = top level).
    depth: usize,
    /// Nesting in `<>` only, counting this character if it opens one.
    angle: usize,
    /// This `>` closes a template argument list.
    closes_angle: bool,
    /// An `operator` keyword starts here.
    operator_at: bool,
}

/// Characters of `name` with their nesting; the symbols of an operator's name (`operator<`,
/// `operator()`, `operator->`) never count as brackets.
fn scan(name: &str) -> Vec<Tok> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(name.len());
    let (mut depth, mut angle) = (0usize, 0usize);
    let mut literal = 0usize; // characters left of an operator symbol
    for (at, ch) in name.char_indices() {
        let operator_at = name[at..].starts_with("operator")
            && (at == 0 || matches!(bytes[at - 1], b':' | b' '))
            && !name[at + 8..]
                .chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if operator_at {
            let rest = &name[at + 8..];
            literal = 8 + if rest.starts_with("()") || rest.starts_with("[]") {
                2
            } else {
                rest.chars()
                    .take_while(|c| "<>=!+-*/%^&|~,".contains(*c))
                    .count()
            };
        }
        let mut tok = Tok {
            at,
            ch,
            depth,
            angle,
            closes_angle: false,
            operator_at,
        };
        if literal > 0 {
            literal -= 1;
        } else {
            match ch {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                '<' => {
                    depth += 1;
                    angle += 1;
                    tok.angle = angle;
                }
                '>' if angle > 0 => {
                    depth = depth.saturating_sub(1);
                    angle -= 1;
                    tok.closes_angle = true;
                }
                _ => {}
            }
        }
        out.push(tok);
    }
    out
}

/// Index of the `(` that opens the parameter list ending `s` (which ends with `)`).
fn matching_open(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn short_name__cpp_signatures__then_qualified_name_only_like_uftrace() {
        for (full, short) in [
            ("ns::Widget::frob(int)", "ns::Widget::frob"),
            ("Thrower::level1(int)", "Thrower::level1"),
            ("ns::bar()", "ns::bar"),
            ("main", "main"),
            ("mycrate::module::func", "mycrate::module::func"),
            ("<alloc::vec::Vec<T> as core::ops::Drop>::drop", "<alloc::vec::Vec<T> as core::ops::Drop>::drop"),
            ("0x401000", "0x401000"),
            ("libx.so+0x40", "libx.so+0x40"),
            ("ns::Box<int>::get() const", "ns::Box::get"),
            ("ns::Box<int>::operator<(ns::Box<int> const&) const", "ns::Box::operator<"),
            ("bool operator< <int>(ns::Box<int> const&, ns::Box<int> const&)", "operator<"),
            ("std::vector<int, std::allocator<int> >::operator[](unsigned long)", "std::vector::operator[]"),
            ("main::{lambda(int)#1}::operator()(int) const", "main::{lambda(int)#1}::operator()"),
            ("X::operator<<(int)", "X::operator<<"),
            ("X::operator->() &&", "X::operator->"),
            ("X::operator unsigned int() const", "X::operator unsigned int"),
            ("operator new(unsigned long)", "operator new"),
            ("(anonymous namespace)::helper(int)", "(anonymous namespace)::helper"),
            ("ns::Thrower::level1(int) [clone .cold]", "ns::Thrower::level1"),
            ("ns::foo(int) [clone .constprop.0] [clone .isra.0]", "ns::foo"),
            ("std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >::_M_data[abi:cxx11]() const", "std::__cxx11::basic_string::_M_data"),
            (
                "std::enable_if<std::__and_<std::__not_<std::__is_tuple_like<int> >, \
                 std::is_move_constructible<int>, std::is_move_assignable<int> >::value, void>::type \
                 std::swap<int>(int&, int&)",
                "std::swap",
            ),
            ("void std::__new_allocator<char>::construct<char, char const&>(char*, char const&)", "std::__new_allocator::construct"),
            ("int (*ns::pick(int))(int)", "int (*ns::pick(int))(int)"),
        ] {
            assert_eq!(short_name(full), short, "{full}");
        }
    }

    #[test]
    fn demangle__rust_cpp_and_c__then_decoded_or_unchanged() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("_ZN2ns6Widget4frobEi"), "ns::Widget::frob(int)");
        assert_eq!(
            demangle("_ZN2ns3fooEi.isra.0"),
            "ns::foo(int) [clone .isra.0]"
        );
        assert_eq!(
            demangle("_ZTISt13runtime_error@GLIBCXX_3.4"),
            "typeinfo for std::runtime_error@GLIBCXX_3.4"
        );
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Zgarbage"), "_Zgarbage");
    }
}
