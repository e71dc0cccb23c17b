//! Strings from a session, made safe to print: a trace's names, paths and manifest strings come
//! from the traced program and from files anyone could have written, so a control character in
//! them (an escape sequence, a carriage return, a newline) is shown as an escape, never sent raw
//! to the terminal where it could clear the screen or forge a line of the tracer's output.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal raw: C0 and C1 controls, DEL, and the Unicode controls
/// that reorder or hide text (bidirectional overrides and isolates, marks, zero-width joiners are
/// left alone: they only change how neighbours join).
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}'
        )
}

/// `s` with every unsafe character written as `\x1b` (below U+0100) or `\u{202e}`; borrowed when
/// nothing needed escaping.
///
/// `clean("a\x1b[2Jb") == "a\\x1b[2Jb"`
pub(crate) fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// The manifest with every string in it (names, paths, arguments, reasons, map keys) cleaned,
/// whatever fields it has.
pub(crate) fn clean_manifest(manifest: &atf::Manifest) -> atf::Manifest {
    let Ok(mut value) = serde_json::to_value(manifest) else {
        return manifest.clone();
    };
    if !clean_value(&mut value) {
        return manifest.clone();
    }
    serde_json::from_value(value).unwrap_or_else(|_| manifest.clone())
}

/// Cleans every string and key in `value`; whether anything changed.
fn clean_value(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => match clean(s) {
            Cow::Borrowed(_) => false,
            Cow::Owned(c) => {
                *s = c;
                true
            }
        },
        Value::Array(items) => items.iter_mut().fold(false, |a, v| clean_value(v) | a),
        Value::Object(map) => {
            let mut changed = false;
            let dirty: Vec<String> = map
                .keys()
                .filter(|k| matches!(clean(k), Cow::Owned(_)))
                .cloned()
                .collect();
            for key in dirty {
                if let Some(v) = map.remove(&key) {
                    map.insert(clean(&key).into_owned(), v);
                    changed = true;
                }
            }
            for v in map.values_mut() {
                changed |= clean_value(v);
            }
            changed
        }
        _ => false,
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn clean__controls_escapes_and_bidi__then_escaped_and_plain_text_borrowed() {
        assert!(matches!(clean("ns::f<int>() ✓"), Cow::Borrowed(_)));
        assert_eq!(clean("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(clean("x\n\u{2713} balanced"), "x\\x0a\u{2713} balanced");
        assert_eq!(clean("\r\t\x7f\u{9b}"), "\\x0d\\x09\\x7f\\x9b");
        assert_eq!(clean("a\u{202e}b"), "a\\u{202e}b");
    }

    #[test]
    fn clean_manifest__strings_anywhere__then_all_cleaned() {
        let mut m = atf::Manifest::new(atf::ClockType::Boottime);
        m.executable = "/tmp/\x1b[2Japp".into();
        m.argv = vec!["app".into(), "\r\u{2713} balanced".into()];
        m.symbols.push(atf::Symbol::new(1, 2, "evil\x07"));
        m.stop_reason = Some("sig\nnal".into());
        m.accounting.index.dropped.other.insert("why\x1b".into(), 3);
        let c = clean_manifest(&m);
        assert_eq!(c.executable, "/tmp/\\x1b[2Japp");
        assert_eq!(c.argv[1], "\\x0d\u{2713} balanced");
        assert_eq!(c.symbols[0].name, "evil\\x07");
        assert_eq!(c.stop_reason.as_deref(), Some("sig\\x0anal"));
        assert_eq!(c.accounting.index.dropped.other["why\\x1b"], 3);
    }
}
