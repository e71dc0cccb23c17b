//! LEB128 varints: 7 bits a byte, low bits first, the top bit set on every byte but the last.

/// Appends `v` (1 to 10 bytes).
#[inline(always)]
pub(crate) fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The varint at `*pos`, advancing past it; `None` if the bytes end first or it runs past 10 bytes.
#[inline(always)]
pub(crate) fn get(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}
