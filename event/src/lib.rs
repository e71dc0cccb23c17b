//! The byte layouts the agent writes into its rings and the trace files store: the 32-byte
//! call/return [`Record`] and the 24-byte header of a detail record ([`DetailHeader`]).
//!
//! Contract: this crate is the one place these layouts are written down. Both are little-endian
//! with fixed offsets; the structs are `#[repr(C)]` and their offsets are checked at compile time,
//! and [`Record::to_bytes`] / [`Record::from_bytes`] are the only conversions. The crate has no
//! dependencies and no `std` (the agent, loaded into other programs, uses it), and every bit
//! pattern decodes (unknown kinds stay as their raw value).
//!
//! ```
//! use event::{Record, CALL, NO_DETAIL};
//! let call = Record { timestamp_ns: 1_000, function_id: 0x40_1130, thread_id: 7, kind: CALL,
//!                     call_depth: 0, detail_seq: NO_DETAIL };
//! let bytes = call.to_bytes();
//! assert_eq!(bytes.len(), event::SIZE);
//! assert_eq!(Record::from_bytes(&bytes), call);
//! ```

#![no_std]

use core::mem::{offset_of, size_of};

/// Size of one [`Record`] in a ring and in an ATF v2 index file.
pub const SIZE: usize = 32;
/// `kind` of a function entry.
pub const CALL: u32 = 1;
/// `kind` of a function exit.
pub const RETURN: u32 = 2;
/// `kind` of a frame unwound by an exception.
pub const EXCEPTION: u32 = 3;
/// `detail_seq` of an event that has no detail record.
pub const NO_DETAIL: u32 = u32::MAX;

/// One call or return, as the agent publishes it.
///
/// | off | field |
/// |---|---|
/// | 0 | u64 timestamp_ns |
/// | 8 | u64 function_id |
/// | 16 | u32 thread_id |
/// | 20 | u32 kind ([`CALL`], [`RETURN`], [`EXCEPTION`], other values kept as is) |
/// | 24 | u32 call_depth |
/// | 28 | u32 detail_seq ([`NO_DETAIL`] = none) |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Record {
    /// The time of the event. In a ring, the session clock's raw reading (TSC ticks, or
    /// nanoseconds when the session does not read the TSC: `registry::Clock::now_ticks`); in a
    /// trace file, and in every record a reader decodes, nanoseconds on the session clock (the
    /// drain converts each ring record's reading with `registry::Clock::to_ns` before writing it).
    pub timestamp_ns: u64,
    /// The function's address, or `(module_id << 32) | symbol_index`.
    pub function_id: u64,
    /// OS thread id.
    pub thread_id: u32,
    /// What happened (see the constants).
    pub kind: u32,
    /// Nesting depth at this event: a call at depth d returns at depth d.
    pub call_depth: u32,
    /// Sequence number of the linked detail record, or [`NO_DETAIL`].
    pub detail_seq: u32,
}

const _: () = {
    assert!(size_of::<Record>() == SIZE);
    assert!(offset_of!(Record, timestamp_ns) == 0);
    assert!(offset_of!(Record, function_id) == 8);
    assert!(offset_of!(Record, thread_id) == 16);
    assert!(offset_of!(Record, kind) == 20);
    assert!(offset_of!(Record, call_depth) == 24);
    assert!(offset_of!(Record, detail_seq) == 28);
};

impl Record {
    /// This record as four words, whose little-endian bytes are [`Record::to_bytes`].
    #[inline(always)]
    pub fn to_words(&self) -> [u64; SIZE / 8] {
        Self::words_with(
            self.timestamp_ns,
            self.function_id,
            Self::thread_kind_word(self.thread_id, self.kind),
            Self::depth_detail_word(self.call_depth, self.detail_seq),
        )
    }

    /// The third of [`Record::to_words`]: `thread_id` and `kind`. The same for every event of
    /// one kind on one thread, so a writer can make it once and pass it to
    /// [`Record::words_with`].
    #[inline(always)]
    pub const fn thread_kind_word(thread_id: u32, kind: u32) -> u64 {
        thread_id as u64 | (kind as u64) << 32
    }

    /// The fourth of [`Record::to_words`]: `call_depth` and `detail_seq`. A writer whose records
    /// share one `detail_seq` can make `depth_detail_word(0, detail_seq)` once and OR each
    /// record's depth into it.
    #[inline(always)]
    pub const fn depth_detail_word(call_depth: u32, detail_seq: u32) -> u64 {
        call_depth as u64 | (detail_seq as u64) << 32
    }

    /// [`Record::to_words`] of the record with these fields, its thread id and kind given as
    /// their word ([`Record::thread_kind_word`]), its depth and detail sequence as theirs
    /// ([`Record::depth_detail_word`]).
    #[inline(always)]
    pub const fn words_with(
        timestamp_ns: u64,
        function_id: u64,
        thread_kind: u64,
        depth_detail: u64,
    ) -> [u64; SIZE / 8] {
        [timestamp_ns, function_id, thread_kind, depth_detail]
    }

    /// The 32 little-endian bytes of this record.
    #[inline(always)]
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        b[0..8].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        b[8..16].copy_from_slice(&self.function_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.thread_id.to_le_bytes());
        b[20..24].copy_from_slice(&self.kind.to_le_bytes());
        b[24..28].copy_from_slice(&self.call_depth.to_le_bytes());
        b[28..32].copy_from_slice(&self.detail_seq.to_le_bytes());
        b
    }

    /// The record stored in 32 bytes (every bit pattern is a record).
    #[inline(always)]
    pub fn from_bytes(b: &[u8; SIZE]) -> Self {
        Record {
            timestamp_ns: u64_at(b, 0),
            function_id: u64_at(b, 8),
            thread_id: u32_at(b, 16),
            kind: u32_at(b, 20),
            call_depth: u32_at(b, 24),
            detail_seq: u32_at(b, 28),
        }
    }

    /// The records of a byte slice taken from a ring or a file, in order; a partial record at the
    /// end is not yielded.
    pub fn iter(bytes: &[u8]) -> impl Iterator<Item = Record> + '_ {
        bytes.chunks_exact(SIZE).map(|c| {
            let mut b = [0u8; SIZE];
            b.copy_from_slice(c);
            Record::from_bytes(&b)
        })
    }
}

/// Implements `put_fields` and `get_fields` for a struct of integer fields stored little-endian
/// at fixed byte offsets of an `N`-byte block (a file header, footer or trailer), and checks at
/// compile time that every field fits in the block. Magic numbers and reserved bytes are the
/// caller's: `put_fields` writes only the listed fields, `get_fields` reads only them. With
/// `magic M` after the size, it also implements `encode` (the magic, the fields, zeros elsewhere)
/// and `decode` (`None` unless the block starts with the magic).
///
/// ```
/// struct Trailer { count: u32, offset: u64 }
/// event::le_fields!(Trailer, 16, { count: u32 @ 4, offset: u64 @ 8 });
/// let mut b = [0u8; 16];
/// Trailer { count: 3, offset: 64 }.put_fields(&mut b);
/// assert_eq!(b[4], 3);
/// assert_eq!(Trailer::get_fields(&b).offset, 64);
/// ```
#[macro_export]
macro_rules! le_fields {
    ($name:ident, $size:expr, magic $magic:expr, { $($field:ident: $ty:ident @ $off:expr),* $(,)? }) => {
        impl $name {
            /// The bytes of this block: the magic at 0, every field at its offset, every other
            /// byte zero.
            #[inline]
            pub fn encode(&self) -> [u8; $size] {
                let mut b = [0u8; $size];
                b[..4].copy_from_slice(&$magic);
                self.put_fields(&mut b);
                b
            }

            /// The block stored in `b`, or `None` if `b` does not start with the magic.
            #[inline]
            pub fn decode(b: &[u8; $size]) -> Option<Self> {
                (b[..4] == $magic).then(|| Self::get_fields(b))
            }
        }
        $crate::le_fields!($name, $size, { $($field: $ty @ $off),* });
    };
    ($name:ident, $size:expr, { $($field:ident: $ty:ident @ $off:expr),* $(,)? }) => {
        impl $name {
            /// Writes every field at its offset of `b`, little-endian; other bytes are untouched.
            #[inline(always)]
            pub fn put_fields(&self, b: &mut [u8; $size]) {
                $( $crate::put_le(b, $off, self.$field.to_le_bytes()); )*
            }

            /// Reads every field from its offset of `b`.
            #[inline(always)]
            pub fn get_fields(b: &[u8; $size]) -> Self {
                $name { $( $field: $ty::from_le_bytes($crate::get_le(b, $off)), )* }
            }
        }
        const _: () = { $( assert!($off + ::core::mem::size_of::<$ty>() <= $size); )* };
    };
}

/// Copies `bytes` to `b[off..off + N]` (for [`le_fields!`]).
#[inline(always)]
pub fn put_le<const N: usize>(b: &mut [u8], off: usize, bytes: [u8; N]) {
    b[off..off + N].copy_from_slice(&bytes);
}

/// The `N` bytes at `b[off..]` (for [`le_fields!`]).
#[inline(always)]
pub fn get_le<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[off..off + N]);
    out
}

/// Header `endian` value of every trace file: little-endian, the only one defined.
pub const ENDIAN_LITTLE: u8 = 1;
/// Header `arch` value for x86_64.
pub const ARCH_X86_64: u8 = 1;
/// Header `arch` value for arm64.
pub const ARCH_ARM64: u8 = 2;
/// Header `os` value for Linux.
pub const OS_LINUX: u8 = 4;

/// The `arch` header value of the machine running this code (0 if neither x86_64 nor arm64).
pub const fn current_arch() -> u8 {
    if cfg!(target_arch = "x86_64") {
        ARCH_X86_64
    } else if cfg!(target_arch = "aarch64") {
        ARCH_ARM64
    } else {
        0
    }
}

/// Declares a struct of integer fields stored little-endian at fixed offsets of an `N`-byte
/// block that starts with a 4-byte magic (a file header, footer or trailer), each field written
/// once with its offset, and implements its conversions with [`le_fields!`].
///
/// ```
/// event::le_struct! {
///     /// A 16-byte trailer.
///     pub struct Trailer(16, magic *b"TRLR") {
///         /// Bytes 8..16: where the index starts.
///         offset: u64 @ 8,
///     }
/// }
/// let b = Trailer { offset: 64 }.encode();
/// assert_eq!((&b[0..4], b[8]), (&b"TRLR"[..], 64));
/// assert_eq!(Trailer::decode(&b), Some(Trailer { offset: 64 }));
/// ```
#[macro_export]
macro_rules! le_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($size:expr, magic $magic:expr) {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ident @ $off:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        $crate::le_fields!($name, $size, magic $magic, { $( $field: $ty @ $off ),* });
    };
}

/// Declares the header struct of a trace file kind with [`le_struct!`]: the fields every kind's
/// header starts with (after the 4-byte magic: `endian` at 4, `version` at 5, `arch` at 6, `os`
/// at 7, `flags` at 8..12, `thread_id` at 12..16), then the kind's own fields at their offsets;
/// also implements `this_machine(version)`, the prefix of a file written here with every other
/// field 0.
///
/// ```
/// event::file_header! {
///     /// A 32-byte header.
///     pub struct Header(32, magic *b"DEMO") {
///         /// Bytes 16..24: events.
///         count: u64 @ 16,
///     }
/// }
/// let h = Header { count: 5, ..Header::this_machine(1) };
/// let b = h.encode();
/// assert_eq!((&b[0..4], b[4], b[16]), (&b"DEMO"[..], event::ENDIAN_LITTLE, 5));
/// assert_eq!(Header::decode(&b), Some(h));
/// ```
#[macro_export]
macro_rules! file_header {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($size:expr, magic $magic:expr) {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ident @ $off:expr ),* $(,)?
        }
    ) => {
        $crate::le_struct! {
            $(#[$meta])*
            pub struct $name($size, magic $magic) {
                /// Byte 4: 1 = little-endian.
                endian: u8 @ 4,
                /// Byte 5: the format version.
                version: u8 @ 5,
                /// Byte 6: 1 x86_64, 2 arm64.
                arch: u8 @ 6,
                /// Byte 7: 4 Linux.
                os: u8 @ 7,
                /// Bytes 8..12: flags (bit 0 in event files: the thread has a detail file).
                flags: u32 @ 8,
                /// Bytes 12..16: OS thread id.
                thread_id: u32 @ 12,
                $( $(#[$field_meta])* $field: $ty @ $off, )*
            }
        }

        impl $name {
            /// The header of a file written on this machine in format `version`: little-endian,
            /// this machine's `arch`, Linux; every other field 0.
            pub fn this_machine(version: u8) -> Self {
                $name {
                    endian: $crate::ENDIAN_LITTLE,
                    version,
                    arch: $crate::current_arch(),
                    os: $crate::OS_LINUX,
                    ..Default::default()
                }
            }
        }
    };
}

/// Size of a [`DetailHeader`].
pub const DETAIL_HEADER_SIZE: usize = 24;
/// Detail record `event_type` of a call.
pub const DETAIL_CALL: u16 = 3;
/// Detail record `event_type` of a return.
pub const DETAIL_RETURN: u16 = 4;

/// The header of a detail record (registers and stack bytes follow it).
///
/// | off | field |
/// |---|---|
/// | 0 | u32 total_length (header + payload) |
/// | 4 | u16 event_type ([`DETAIL_CALL`], [`DETAIL_RETURN`]) |
/// | 6 | u16 flags |
/// | 8 | u32 index_seq (position of the linked call/return in the thread's event stream) |
/// | 12 | u32 thread_id |
/// | 16 | u64 timestamp_ns |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DetailHeader {
    /// Header plus payload, in bytes.
    pub total_length: u32,
    /// [`DETAIL_CALL`] or [`DETAIL_RETURN`].
    pub event_type: u16,
    /// Reserved, 0.
    pub flags: u16,
    /// Position of the linked event in the thread's event stream.
    pub index_seq: u32,
    /// OS thread id.
    pub thread_id: u32,
    /// The time of the event, as [`Record::timestamp_ns`]: raw clock reading in a ring,
    /// nanoseconds in a file.
    pub timestamp_ns: u64,
}

const _: () = {
    assert!(size_of::<DetailHeader>() == DETAIL_HEADER_SIZE);
    assert!(offset_of!(DetailHeader, total_length) == 0);
    assert!(offset_of!(DetailHeader, event_type) == 4);
    assert!(offset_of!(DetailHeader, flags) == 6);
    assert!(offset_of!(DetailHeader, index_seq) == 8);
    assert!(offset_of!(DetailHeader, thread_id) == 12);
    assert!(offset_of!(DetailHeader, timestamp_ns) == 16);
};

impl DetailHeader {
    /// The header of a record whose payload is `payload_len` bytes (`total_length` counts the
    /// header too), flags 0.
    pub const fn for_payload(
        event_type: u16,
        index_seq: u32,
        thread_id: u32,
        timestamp_ns: u64,
        payload_len: usize,
    ) -> Self {
        DetailHeader {
            total_length: (DETAIL_HEADER_SIZE + payload_len) as u32,
            event_type,
            flags: 0,
            index_seq,
            thread_id,
            timestamp_ns,
        }
    }

    /// The 24 little-endian bytes of this header.
    #[inline(always)]
    pub fn to_bytes(&self) -> [u8; DETAIL_HEADER_SIZE] {
        let mut b = [0u8; DETAIL_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.total_length.to_le_bytes());
        b[4..6].copy_from_slice(&self.event_type.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.index_seq.to_le_bytes());
        b[12..16].copy_from_slice(&self.thread_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        b
    }

    /// The header stored in 24 bytes.
    #[inline(always)]
    pub fn from_bytes(b: &[u8; DETAIL_HEADER_SIZE]) -> Self {
        DetailHeader {
            total_length: u32_at(b, 0),
            event_type: u16::from_le_bytes([b[4], b[5]]),
            flags: u16::from_le_bytes([b[6], b[7]]),
            index_seq: u32_at(b, 8),
            thread_id: u32_at(b, 12),
            timestamp_ns: u64_at(b, 16),
        }
    }
}

/// The registers at the start of a detail payload on x86_64, in order: the argument registers,
/// the others the hook saves, `rsp` at hook entry (pointing at the hook's return address) and
/// `ret`, that return address (inside the instrumented function).
pub const DETAIL_REGISTERS: [&str; 17] = [
    "rdi", "rsi", "rdx", "rcx", "r8", "r9", "rax", "rbx", "rbp", "r10", "r11", "r12", "r13", "r14",
    "r15", "rsp", "ret",
];
/// Detail payload flag: the stack copy was clamped to the thread's stack bounds.
pub const DETAIL_STACK_CLAMPED: u32 = 1;

/// A detail record's payload: the registers ([`DETAIL_REGISTERS`], u64 each), then a u32 count
/// of stack bytes, a u32 of flags ([`DETAIL_STACK_CLAMPED`]) and the stack bytes copied upwards
/// from `rsp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetailPayload<'a> {
    /// Register values, in [`DETAIL_REGISTERS`] order.
    pub registers: [u64; DETAIL_REGISTERS.len()],
    /// Payload flags.
    pub flags: u32,
    /// The stack bytes, from `rsp` upwards.
    pub stack: &'a [u8],
}

impl<'a> DetailPayload<'a> {
    /// The payload in `bytes` (after the record header), or `None` if it is too short for the
    /// registers or for the stack bytes it announces.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let regs = DETAIL_REGISTERS.len() * 8;
        if bytes.len() < regs + 8 {
            return None;
        }
        let mut registers = [0u64; DETAIL_REGISTERS.len()];
        for (i, r) in registers.iter_mut().enumerate() {
            *r = u64_at(bytes, i * 8);
        }
        let len = u32_at(bytes, regs) as usize;
        let stack = bytes.get(regs + 8..)?.get(..len)?;
        Some(DetailPayload {
            registers,
            flags: u32_at(bytes, regs + 4),
            stack,
        })
    }
}

#[inline(always)]
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline(always)]
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn record__bytes_at_documented_offsets__then_round_trip() {
        let r = Record {
            timestamp_ns: 0x0102_0304_0506_0708,
            function_id: 0x1112_1314_1516_1718,
            thread_id: 0x2122_2324,
            kind: RETURN,
            call_depth: 0x3132_3334,
            detail_seq: NO_DETAIL,
        };
        let b = r.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[8], 0x18);
        assert_eq!(b[16], 0x24);
        assert_eq!(b[20], 2);
        assert_eq!(b[24], 0x34);
        assert_eq!(&b[28..32], &[0xff; 4]);
        assert_eq!(Record::from_bytes(&b), r);
        assert_eq!(Record::iter(&[b, b].concat()).count(), 2);
        assert_eq!(Record::iter(&b[..31]).count(), 0);
        for (i, w) in r.to_words().iter().enumerate() {
            assert_eq!(
                w.to_le_bytes(),
                b[i * 8..i * 8 + 8],
                "word {i} is its 8 bytes"
            );
        }
        let thread_kind = Record::thread_kind_word(r.thread_id, r.kind);
        let no_detail = Record::depth_detail_word(0, NO_DETAIL);
        assert_eq!(
            Record::words_with(
                r.timestamp_ns,
                r.function_id,
                thread_kind,
                0x3132_3334 | no_detail
            ),
            r.to_words()
        );
    }

    #[test]
    fn detail_header__bytes_at_documented_offsets__then_round_trip() {
        let h = DetailHeader {
            total_length: 0xa1a2_a3a4,
            event_type: 0xb1b2,
            flags: 0xc1c2,
            index_seq: 0xd1d2_d3d4,
            thread_id: 0xe1e2_e3e4,
            timestamp_ns: 0xf1f2_f3f4_f5f6_f7f8,
        };
        let b = h.to_bytes();
        let fields: [&[u8]; 6] = [
            &0xa1a2_a3a4u32.to_le_bytes(),
            &0xb1b2u16.to_le_bytes(),
            &0xc1c2u16.to_le_bytes(),
            &0xd1d2_d3d4u32.to_le_bytes(),
            &0xe1e2_e3e4u32.to_le_bytes(),
            &0xf1f2_f3f4_f5f6_f7f8u64.to_le_bytes(),
        ];
        // The fields back to back, in the documented order, and nothing else.
        let mut expected = [0u8; DETAIL_HEADER_SIZE];
        let mut at = 0;
        for f in fields {
            expected[at..at + f.len()].copy_from_slice(f);
            at += f.len();
        }
        assert_eq!(at, DETAIL_HEADER_SIZE);
        assert_eq!(b, expected);
        assert_eq!(DetailHeader::from_bytes(&b), h);
        let short = DetailHeader::for_payload(DETAIL_RETURN, 9, 5, 77, 176);
        assert_eq!((short.total_length, short.flags), (200, 0));
    }
}
