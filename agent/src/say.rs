//! The agent's only output: one line on stderr, for the rare things a user must know.

/// Writes one line to stderr without allocating or locking.
pub(crate) fn say(line: &str) {
    let mut buf = [0u8; 512];
    let prefix = b"tracer agent: ";
    let body = line.as_bytes();
    let n = (prefix.len() + body.len()).min(buf.len() - 1);
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..n].copy_from_slice(&body[..n - prefix.len()]);
    buf[n] = b'\n';
    // SAFETY: writing our own buffer to fd 2; a failed write is ignored (nothing else to do).
    unsafe { libc::write(2, buf.as_ptr().cast(), n + 1) };
}
