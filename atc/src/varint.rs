//! LEB128 varints: 7 bits a byte, low bits first, the top bit set on every byte but the last.

/// The most bytes a varint takes (a `u64`).
pub(crate) const MAX_LEN: usize = 10;

/// Writes `v` at the start of `buf` (1 to 10 bytes) and returns how many bytes it took; the
/// bytes after those may be overwritten. Values below 2^14 (the common timestamp deltas and
/// dictionary numbers, which straddle the one-byte limit at random) take no data-dependent
/// branch: both bytes are written and the length computed.
#[inline(always)]
pub(crate) fn put_at(buf: &mut [u8; MAX_LEN], mut v: u64) -> usize {
    if v < 0x4000 {
        let more = usize::from(v >= 0x80);
        buf[0] = v as u8 | (more as u8) << 7;
        buf[1] = (v >> 7) as u8;
        return 1 + more;
    }
    let mut n = 0;
    while v >= 0x80 && n < MAX_LEN - 1 {
        buf[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    n + 1
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

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn varint__every_length__then_read_back_with_the_length_written() {
        let mut values = vec![0u64, 1, 0x7f, 0x80, 0x3fff, 0x4000, u64::MAX, u64::MAX >> 1];
        values.extend((0..64).map(|b| 1u64 << b));
        values.extend((1..64).map(|b| (1u64 << b) - 1));
        for v in values {
            let mut buf = [0u8; MAX_LEN];
            let n = put_at(&mut buf, v);
            let mut pos = 0;
            assert_eq!(get(&buf, &mut pos), Some(v), "{v:#x}");
            assert_eq!(pos, n, "{v:#x}");
            assert_eq!(
                n,
                (64 - v.leading_zeros()).max(1).div_ceil(7) as usize,
                "{v:#x}"
            );
        }
    }
}
