//! Tests every trace file kind shares, written once: each function here is one behaviour, and
//! each kind's test module runs it through [`FileKind`] (`index.atf` and `index.atc` events,
//! `detail.atf` records). A kind's own tests keep what only that kind has (its byte layout, its
//! header checks, its chunks).

use std::fmt::Debug;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use crate::fault::{FaultPlan, FaultyFs};
use crate::{Error, FileSystem, RealFs, Result, HEADER_SIZE};

/// One trace file kind as the shared tests drive it: a writer that appends items `0, 1, 2, …`
/// (each kind makes item `i` its own way) and a reader that gives them back.
pub(crate) trait FileKind {
    /// The kind's writer.
    type Writer;
    /// The kind's reader.
    type Reader;
    /// What the reader gives back: an event or a record.
    type Item: PartialEq + Debug;
    /// The file name the tests give it.
    const NAME: &'static str;
    /// The leading bytes of a valid header, for fuzz input that gets past the magic check.
    const MAGIC: &'static [u8];
    /// What the recovery note calls an item ("events", "records").
    const ITEMS: &'static str;
    /// How many operations [`step`](Self::step) knows: codes 0 to 3 are shared, 4 up to this
    /// the kind's own.
    const OPS: u8;
    /// The EINTR storm: batch sizes, every how many writes one is interrupted, the longest write.
    const STORM: (&'static [u64], u64, usize);
    /// What the recovery note says of a partial last item.
    const PARTIAL_NOTE: &'static str;

    /// Item `i`.
    fn item(i: u64) -> Self::Item;
    /// Creates the writer on `fs`.
    fn create_with(fs: &dyn FileSystem, path: &Path) -> Result<Self::Writer>;
    /// Appends items `range` in one batch.
    fn append(w: &mut Self::Writer, range: Range<u64>) -> Result<()>;
    /// Appends item `i` alone (the single-item call).
    fn append_one(w: &mut Self::Writer, i: u64) -> Result<()>;
    /// Writes the buffer out.
    fn flush(w: &mut Self::Writer) -> Result<()>;
    /// Makes the written items durable.
    fn sync(w: &mut Self::Writer) -> Result<()>;
    /// Finishes the file, with or without the final fsync.
    fn finish(w: Self::Writer, sync: bool) -> Result<()>;
    /// A kind-specific operation (code 4 and up, below [`OPS`](Self::OPS); `n` its argument).
    fn extra(w: &mut Self::Writer, op: u8, n: u64) -> Result<()>;
    /// Opens a file.
    fn open(path: &Path) -> Result<Self::Reader>;
    /// Every item the reader gives; any error fails the test.
    fn read_all(r: &Self::Reader) -> Vec<Self::Item>;
    /// Whether the file was finished.
    fn finished(r: &Self::Reader) -> bool;
    /// How many items the reader counts.
    fn count(r: &Self::Reader) -> u64;
    /// Why the file counts as unfinished, if it does.
    fn note(r: &Self::Reader) -> Option<String>;
    /// Compares the footer's checksum with the items'.
    fn verify_checksum(r: &Self::Reader) -> Result<bool>;
    /// Reads all a reader of any (damaged) file offers, checking what must hold of each item.
    fn read_anything(r: &Self::Reader);
    /// Bytes items `0..n` take in the file (kinds that store items whole).
    fn bytes_of(n: u64) -> u64;
    /// Whether what the kind's own operations (set while writing) shows in the finished file.
    fn extras_held(_r: &Self::Reader) -> bool {
        true
    }

    /// Creates the writer on the real file system.
    fn create(path: &Path) -> Result<Self::Writer> {
        Self::create_with(&RealFs, path)
    }

    /// Items `range`, as the reader gives them.
    fn items(range: Range<u64>) -> Vec<Self::Item> {
        range.map(Self::item).collect()
    }

    /// Writes a finished file of items `0..n`.
    fn write_finished(path: &Path, n: u64) {
        let mut w = Self::create(path).unwrap();
        Self::append(&mut w, 0..n).unwrap();
        Self::finish(w, true).unwrap();
    }

    /// One operation of a random sequence: 0 appends a batch of `n`, 1 one item, 2 flushes,
    /// 3 syncs, higher codes are the kind's [`extra`](Self::extra). `next` is the next item.
    fn step(w: &mut Self::Writer, op: u8, n: u64, next: &mut u64) -> Result<()> {
        match op {
            0 => {
                *next += n;
                Self::append(w, *next - n..*next)
            }
            1 => {
                *next += 1;
                Self::append_one(w, *next - 1)
            }
            2 => Self::flush(w),
            3 => Self::sync(w),
            _ => Self::extra(w, op, n),
        }
    }
}

fn faulty(plan: FaultPlan) -> Arc<FaultyFs> {
    Arc::new(FaultyFs::new(plan))
}

/// The OS error of an I/O error, after checking that its message names `path`.
pub(crate) fn os_error(err: &Error, path: &Path) -> Option<i32> {
    match err {
        Error::Io {
            path: at, source, ..
        } => {
            assert_eq!(at, path, "{err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            source.raw_os_error()
        }
        other => panic!("not an I/O error: {other}"),
    }
}

/// Any bytes, perhaps starting with a valid magic: opening and reading never panics.
pub(crate) fn arbitrary_bytes__then_no_panic<K: FileKind>(mut bytes: Vec<u8>, magic: bool) {
    if magic && bytes.len() >= K::MAGIC.len() {
        bytes[..K::MAGIC.len()].copy_from_slice(K::MAGIC);
    }
    open_and_read::<K>(&bytes);
}

/// A finished file of `n` items with bytes overwritten and then cut: no panic.
pub(crate) fn mutated_valid_file__then_no_panic<K: FileKind>(
    n: u64,
    flips: Vec<(usize, u8)>,
    cut: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src");
    K::write_finished(&path, n);
    let mut bytes = std::fs::read(&path).unwrap();
    for (at, value) in flips {
        let at = at % bytes.len();
        bytes[at] = value;
    }
    let keep = cut % (bytes.len() + 1);
    open_and_read::<K>(&bytes[..keep]);
}

fn open_and_read<K: FileKind>(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    std::fs::write(&path, bytes).unwrap();
    if let Ok(r) = K::open(&path) {
        K::read_anything(&r);
        let _ = K::verify_checksum(&r);
    }
}

/// A file of `n` items, finished or left unfinished after a flush, cut at every length: a cut
/// into the header is refused naming the header, any longer cut opens with every item that
/// ends before the cut, and only the whole finished file counts as finished.
pub(crate) fn cut_at_every_length__then_every_complete_item_recovered<K: FileKind>(
    n: u64,
    finished: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut w = K::create(&src).unwrap();
    K::append(&mut w, 0..n).unwrap();
    if finished {
        K::finish(w, true).unwrap();
    } else {
        K::flush(&mut w).unwrap();
        std::mem::forget(w);
    }
    let full = std::fs::read(&src).unwrap();
    let path = dir.path().join(K::NAME);
    for cut in 0..=full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        match K::open(&path) {
            Err(e) => {
                assert!(cut < HEADER_SIZE, "cut at {cut}: {e}");
                assert!(e.to_string().contains("shorter than the 64-byte"), "{e}");
            }
            Ok(r) => {
                assert!(cut >= HEADER_SIZE, "cut at {cut}");
                let whole = cut == full.len() && finished;
                assert_eq!(K::finished(&r), whole, "cut at {cut}");
                let complete = (0..=n)
                    .take_while(|&i| HEADER_SIZE as u64 + K::bytes_of(i) <= cut as u64)
                    .last()
                    .unwrap_or(0);
                assert_eq!(K::count(&r), complete, "cut at {cut}");
                assert_eq!(K::read_all(&r), K::items(0..complete), "cut at {cut}");
            }
        }
    }
}

/// A writer flushed, synced, given more and then forgotten (a SIGKILL): the reader recovers
/// what reached the file and says so; the buffered rest is lost.
pub(crate) fn forgotten_after_sync__then_reader_recovers_every_flushed_item<K: FileKind>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    let mut w = K::create(&path).unwrap();
    K::append(&mut w, 0..1000).unwrap();
    K::flush(&mut w).unwrap();
    K::append(&mut w, 1000..1500).unwrap();
    K::sync(&mut w).unwrap();
    K::append(&mut w, 1500..1600).unwrap(); // buffered only: lost, as in a SIGKILL
    std::mem::forget(w);
    let r = K::open(&path).unwrap();
    assert!(!K::finished(&r));
    let note = K::note(&r).unwrap();
    let expected = format!("recovered 1500 complete {}", K::ITEMS);
    assert!(note.contains(&expected), "{note}");
    assert_eq!(K::count(&r), 1500);
    assert_eq!(K::read_all(&r), K::items(0..1500));
    assert!(!K::verify_checksum(&r).unwrap());
}

/// A writer dropped unfinished writes what it buffered: a file without footer, every item in it.
pub(crate) fn dropped_unfinished__then_buffered_items_written<K: FileKind>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    let mut w = K::create(&path).unwrap();
    K::append(&mut w, 0..10).unwrap();
    drop(w);
    let r = K::open(&path).unwrap();
    assert!(!K::finished(&r));
    assert_eq!(K::read_all(&r), K::items(0..10));
}

/// Writes interrupted (EINTR) and cut short over and over: every item reaches the file once.
/// [`FileKind::STORM`] shapes the storm.
pub(crate) fn eintr_storm_and_short_writes__then_file_holds_every_item_once<K: FileKind>() {
    let (batches, interrupt_every, short_max) = K::STORM;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    let fs = faulty(
        FaultPlan::new()
            .interrupt_writes_every(interrupt_every)
            .short_writes_every(1, short_max),
    );
    let mut w = K::create_with(&*fs, &path).unwrap();
    let mut next = 0u64;
    // Batches (buffered ones and ones written straight from the slice), single items, the
    // kind's own operations, a sync, more items.
    for &n in batches {
        K::step(&mut w, 0, n, &mut next).unwrap();
    }
    for _ in 0..10 {
        K::step(&mut w, 1, 1, &mut next).unwrap();
    }
    for op in 4..K::OPS {
        K::extra(&mut w, op, 2).unwrap();
    }
    K::sync(&mut w).unwrap();
    K::step(&mut w, 0, 990, &mut next).unwrap();
    K::step(&mut w, 1, 1, &mut next).unwrap();
    K::finish(w, true).unwrap();

    let r = K::open(&path).unwrap();
    assert!(K::finished(&r));
    assert_eq!(K::read_all(&r), K::items(0..next));
    assert!(K::verify_checksum(&r).unwrap());
    let injected = fs.injected();
    assert!(injected.interrupts > 10, "{injected:?}");
    assert!(injected.short_writes > 10, "{injected:?}");
    assert!(K::extras_held(&r));
}

/// The disk fills in the middle of a flush, `fit` whole items and half of the next in: ENOSPC
/// naming the file (the OS error as the source, not repeated in the message), the writer
/// refuses more, and the file keeps and reads back every whole item that reached it.
pub(crate) fn disk_full_mid_flush__then_enospc_naming_file_and_whole_items_readable<K: FileKind>() {
    let fit = 40;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    let half = (K::bytes_of(fit + 1) - K::bytes_of(fit)) / 2;
    let room = HEADER_SIZE as u64 + K::bytes_of(fit) + half;
    let fs = faulty(FaultPlan::new().full_after(room, libc::ENOSPC));
    let mut w = K::create_with(&*fs, &path).unwrap();
    K::append(&mut w, 0..10 * fit).unwrap(); // buffered
    let err = K::flush(&mut w).unwrap_err();
    assert_eq!(os_error(&err, &path), Some(libc::ENOSPC));
    let cause = std::error::Error::source(&err).map(|c| c.to_string());
    assert!(cause.is_some_and(|c| c.contains("os error 28")), "{err:?}");
    assert!(!err.to_string().contains("os error 28"), "{err}");
    let refused = K::append(&mut w, 10 * fit..10 * fit + 1).unwrap_err();
    assert!(matches!(refused, Error::WriterFailed { .. }), "{refused}");
    assert!(matches!(
        K::finish(w, true),
        Err(Error::WriterFailed { .. })
    ));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), room);
    let r = K::open(&path).unwrap();
    assert!(!K::finished(&r));
    assert_eq!(K::read_all(&r), K::items(0..fit));
    let note = K::note(&r);
    assert!(
        note.as_deref().is_some_and(|n| n.contains(K::PARTIAL_NOTE)),
        "{note:?}"
    );
}

/// The third write (the second flush) fails with `errno`: the error carries it, the writer
/// refuses more, and the items of the first flush are readable.
pub(crate) fn write_fails__then_error_carries_it_and_earlier_items_readable<K: FileKind>(
    errno: i32,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    // Write 1 is the header, 2 the first flush, 3 the second.
    let fs = faulty(FaultPlan::new().fail_write(3, errno));
    let mut w = K::create_with(&*fs, &path).unwrap();
    K::append(&mut w, 0..10).unwrap();
    K::flush(&mut w).unwrap();
    K::append(&mut w, 10..20).unwrap();
    let err = K::flush(&mut w).unwrap_err();
    assert_eq!(os_error(&err, &path), Some(errno));
    assert!(matches!(K::flush(&mut w), Err(Error::WriterFailed { .. })));
    assert!(matches!(
        K::finish(w, true),
        Err(Error::WriterFailed { .. })
    ));
    let r = K::open(&path).unwrap();
    assert_eq!(K::read_all(&r), K::items(0..10));
}

/// The disk fills `into_footer` bytes into the footer: ENOSPC, and the footer's bytes are
/// never read as an item.
pub(crate) fn footer_cut_short_by_full_disk__then_items_readable<K: FileKind>(into_footer: u64) {
    let n = 10;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    let room = HEADER_SIZE as u64 + K::bytes_of(n) + into_footer;
    let fs = faulty(FaultPlan::new().full_after(room, libc::ENOSPC));
    let mut w = K::create_with(&*fs, &path).unwrap();
    K::append(&mut w, 0..n).unwrap();
    let err = K::finish(w, true).unwrap_err();
    assert_eq!(os_error(&err, &path), Some(libc::ENOSPC));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), room);
    let r = K::open(&path).unwrap();
    assert!(!K::finished(&r));
    assert_eq!(
        K::read_all(&r),
        K::items(0..n),
        "cut {into_footer} into the footer"
    );
}

/// The first fsync fails (of `sync` or of `finish`): the error says the state is unknown, no
/// fsync is tried again, and the written items stay readable.
pub(crate) fn fsync_fails__then_error_says_state_unknown_and_sync_not_retried<K: FileKind>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    let fs = faulty(FaultPlan::new().fail_sync(1, libc::EIO));
    let mut w = K::create_with(&*fs, &path).unwrap();
    K::append(&mut w, 0..10).unwrap();
    let err = K::sync(&mut w).unwrap_err();
    assert_eq!(os_error(&err, &path), Some(libc::EIO));
    assert!(err.to_string().contains("unknown"), "{err}");
    // The next fsync would succeed, but it would not cover the failed one: refused.
    assert!(matches!(K::sync(&mut w), Err(Error::WriterFailed { .. })));
    assert!(matches!(
        K::finish(w, true),
        Err(Error::WriterFailed { .. })
    ));
    assert_eq!(fs.injected().sync_calls, 1);
    // The written items are in the file (the page cache), readable.
    assert_eq!(K::count(&K::open(&path).unwrap()), 10);

    // The fsync of `finish` is reported the same way.
    let path = dir.path().join(format!("2{}", K::NAME));
    let fs = faulty(FaultPlan::new().fail_sync(1, libc::EIO));
    let mut w = K::create_with(&*fs, &path).unwrap();
    K::append(&mut w, 0..10).unwrap();
    let err = K::finish(w, true).unwrap_err();
    assert_eq!(os_error(&err, &path), Some(libc::EIO));
    assert_eq!(K::read_all(&K::open(&path).unwrap()).len(), 10);
}

/// An fsync that takes an hour (stalled by the fault layer): sync and finish complete, each
/// fsync stalled once; the default stall really sleeps.
pub(crate) fn slow_fsync__then_sync_and_finish_complete<K: FileKind>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    let stalls = Arc::new(AtomicU64::new(0));
    let seen = stalls.clone();
    let plan = FaultPlan::new().slow_sync(Duration::from_secs(3600));
    let fs = Arc::new(FaultyFs::with_stall(plan, move |d| {
        assert_eq!(d, Duration::from_secs(3600));
        seen.fetch_add(1, Relaxed);
    }));
    let mut w = K::create_with(&*fs, &path).unwrap();
    K::append(&mut w, 0..10).unwrap();
    K::sync(&mut w).unwrap();
    K::finish(w, true).unwrap();
    assert_eq!(stalls.load(Relaxed), 2);
    assert!(K::finished(&K::open(&path).unwrap()));

    let path = dir.path().join(format!("2{}", K::NAME));
    let fs = faulty(FaultPlan::new().slow_sync(Duration::from_millis(5)));
    let mut w = K::create_with(&*fs, &path).unwrap();
    K::append(&mut w, 0..10).unwrap();
    K::finish(w, true).unwrap();
    assert_eq!(fs.injected().stalls, 1);
}

/// The header cannot be written (a full disk part way, or EIO): creating fails naming the
/// file and the error, and no file is left behind.
pub(crate) fn header_cannot_be_written__then_create_fails_and_leaves_no_file<K: FileKind>() {
    for (plan, errno) in [
        (FaultPlan::new().full_after(10, libc::ENOSPC), libc::ENOSPC),
        (FaultPlan::new().fail_write(1, libc::EIO), libc::EIO),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(K::NAME);
        let err = K::create_with(&*faulty(plan), &path).err().unwrap();
        assert_eq!(os_error(&err, &path), Some(errno));
        assert!(err.to_string().contains("removed"), "{err}");
        assert!(!path.exists());
    }
}

/// A random fault plan under a random sequence of operations, ended by `finish`, an unsynced
/// finish or a drop: no panic, every error an I/O error or a refusal after one, and the file
/// a prefix of the items (all of them when nothing failed and the file was finished).
pub(crate) fn random_fault_plan__then_no_panic_and_file_a_prefix_of_the_items<K: FileKind>(
    seed: u64,
    ops: Vec<(u8, u64)>,
    end: u8,
) -> std::result::Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(K::NAME);
    let plan = FaultPlan::random(seed).slow_sync(Duration::ZERO);
    let fs = Arc::new(FaultyFs::with_stall(plan, |_| {}));
    let mut w = match K::create_with(&*fs, &path) {
        Ok(w) => w,
        Err(e) => {
            prop_assert!(os_error(&e, &path).is_some());
            prop_assert!(!path.exists());
            return Ok(());
        }
    };
    let mut next = 0u64;
    let mut clean = true;
    for (op, n) in ops {
        if let Err(e) = K::step(&mut w, op % K::OPS, n, &mut next) {
            prop_assert!(
                matches!(e, Error::Io { .. } | Error::WriterFailed { .. }),
                "{e}"
            );
            clean = false;
        }
    }
    let finished = match end {
        0 => K::finish(w, true).is_ok(),
        1 => K::finish(w, false).is_ok(),
        _ => {
            drop(w);
            false
        }
    };
    let r = K::open(&path).unwrap();
    let items = K::read_all(&r);
    prop_assert!(items.len() as u64 <= next);
    prop_assert_eq!(&items, &K::items(0..items.len() as u64));
    if finished && clean {
        prop_assert!(K::finished(&r));
        prop_assert_eq!(items.len() as u64, next);
    }
    Ok(())
}

/// Inside an `impl FileKind`: the methods whose writer and reader calls have the same names in
/// every kind (`flush`, `sync`, `finish`, `open`, `finished`, `recovery_note`,
/// `verify_checksum`).
macro_rules! same_named_calls {
    ($writer:ty, $reader:ty) => {
        fn flush(w: &mut $writer) -> crate::Result<()> {
            w.flush()
        }
        fn sync(w: &mut $writer) -> crate::Result<()> {
            w.sync()
        }
        fn finish(w: $writer, sync: bool) -> crate::Result<()> {
            if sync {
                w.finish().map(drop)
            } else {
                w.finish_unsynced().map(drop)
            }
        }
        fn open(path: &std::path::Path) -> crate::Result<$reader> {
            <$reader>::open(path)
        }
        fn finished(r: &$reader) -> bool {
            r.finished()
        }
        fn note(r: &$reader) -> Option<String> {
            r.recovery_note().map(str::to_owned)
        }
        fn verify_checksum(r: &$reader) -> crate::Result<bool> {
            r.verify_checksum()
        }
    };
}

/// The shared tests every kind runs, in a module `shared` of the caller: `writer_tests!(Kind)`.
macro_rules! writer_tests {
    ($kind:ty) => {
        mod shared {
            use super::*;
            use crate::testkit as kit;
            use proptest::prelude::{any, ProptestConfig};
            use proptest::proptest;

            #[test]
            fn dropped_unfinished__then_buffered_items_written() {
                kit::dropped_unfinished__then_buffered_items_written::<$kind>();
            }

            #[test]
            fn eintr_storm_and_short_writes__then_file_holds_every_item_once() {
                kit::eintr_storm_and_short_writes__then_file_holds_every_item_once::<$kind>();
            }

            #[test]
            fn write_fails_with_eio_or_efbig__then_error_carries_it_and_earlier_items_readable() {
                for errno in [libc::EIO, libc::EFBIG] {
                    kit::write_fails__then_error_carries_it_and_earlier_items_readable::<$kind>(
                        errno,
                    );
                }
            }

            #[test]
            fn fsync_fails__then_error_says_state_unknown_and_sync_not_retried() {
                kit::fsync_fails__then_error_says_state_unknown_and_sync_not_retried::<$kind>();
            }

            #[test]
            fn slow_fsync__then_sync_and_finish_complete() {
                kit::slow_fsync__then_sync_and_finish_complete::<$kind>();
            }

            #[test]
            fn header_cannot_be_written__then_create_fails_and_leaves_no_file() {
                kit::header_cannot_be_written__then_create_fails_and_leaves_no_file::<$kind>();
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

                #[test]
                fn arbitrary_bytes__then_no_panic(
                    bytes in proptest::collection::vec(any::<u8>(), 0..600),
                    magic in any::<bool>(),
                ) {
                    kit::arbitrary_bytes__then_no_panic::<$kind>(bytes, magic);
                }

                #[test]
                fn mutated_valid_file__then_no_panic(
                    n in 0u64..20,
                    flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
                    cut in any::<usize>(),
                ) {
                    kit::mutated_valid_file__then_no_panic::<$kind>(n, flips, cut);
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

                #[test]
                fn random_fault_plan__then_no_panic_and_file_a_prefix_of_the_items(
                    seed in any::<u64>(),
                    ops in proptest::collection::vec((any::<u8>(), 1u64..5_000), 1..10),
                    end in 0u8..3,
                ) {
                    kit::random_fault_plan__then_no_panic_and_file_a_prefix_of_the_items::<$kind>(
                        seed, ops, end,
                    )?;
                }
            }
        }
    };
}

/// The shared tests of kinds that store items whole (not in compressed chunks), in a module
/// `whole_items` of the caller: `whole_item_tests!(Kind)`.
macro_rules! whole_item_tests {
    ($kind:ty) => {
        mod whole_items {
            use super::*;
            use crate::testkit as kit;

            #[test]
            fn finished_file_cut_at_every_length__then_every_complete_item_recovered() {
                kit::cut_at_every_length__then_every_complete_item_recovered::<$kind>(10, true);
            }

            #[test]
            fn unfinished_file_cut_at_every_length__then_every_complete_item_recovered() {
                kit::cut_at_every_length__then_every_complete_item_recovered::<$kind>(10, false);
            }

            #[test]
            fn forgotten_after_sync__then_reader_recovers_every_flushed_item() {
                kit::forgotten_after_sync__then_reader_recovers_every_flushed_item::<$kind>();
            }

            #[test]
            fn disk_full_mid_flush__then_enospc_naming_file_and_whole_items_readable() {
                kit::disk_full_mid_flush__then_enospc_naming_file_and_whole_items_readable::<$kind>(
                );
            }

            #[test]
            fn footer_cut_short_by_full_disk__then_its_bytes_never_read_as_an_item() {
                for into_footer in [30, 40] {
                    kit::footer_cut_short_by_full_disk__then_items_readable::<$kind>(into_footer);
                }
            }
        }
    };
}

/// The checksum and the four 8-byte fields an ATF v2 footer layout test stores, in file order:
/// each byte says where it belongs (`0xa1..` the checksum, `0xb1..` at 8, `0xc1..` at 16, `0xd1..`
/// at 24, `0xe1..` at 32).
pub(crate) const FOOTER_FIELDS: (u32, [u64; 4]) = (
    0xa1a2_a3a4,
    [
        0xb1b2_b3b4_b5b6_b7b8,
        0xc1c2_c3c4_c5c6_c7c8,
        0xd1d2_d3d4_d5d6_d7d8,
        0xe1e2_e3e4_e5e6_e7e8,
    ],
);

/// Asserts that `b` is a 64-byte ATF v2 footer holding [`FOOTER_FIELDS`]: `magic`, the checksum
/// at 4, the four fields at 8, 16, 24 and 32, and 24 reserved zero bytes.
pub(crate) fn assert_footer_layout(b: &[u8], magic: &[u8; 4]) {
    let (checksum, fields) = FOOTER_FIELDS;
    assert_eq!(b.len(), 64);
    assert_eq!(&b[0..4], magic);
    assert_eq!(b[4..8], checksum.to_le_bytes());
    for (i, field) in fields.iter().enumerate() {
        assert_eq!(
            b[8 + 8 * i..16 + 8 * i],
            field.to_le_bytes(),
            "field at {}",
            8 + 8 * i
        );
    }
    assert_eq!(b[40..64], [0; 24], "reserved");
}
