//! A real cross-process run: a forked child produces into a pool in a memfd mapping, the parent
//! drains it concurrently; counts and order match exactly.
#![allow(non_snake_case)]

use core::ptr::NonNull;

use ring::{FullPolicy, PoolConfig, RecordKind, RingPool, StdBackend};

const RECORDS: u64 = 200_000;

struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl SharedMapping {
    /// A memfd of `len` bytes mapped MAP_SHARED: what the tracer gives the agent.
    fn new(len: usize) -> Self {
        // SAFETY: plain syscalls with valid arguments; results checked.
        unsafe {
            let fd = libc::memfd_create(c"ring-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create failed");
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            let ptr = libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
            libc::close(fd);
            SharedMapping {
                ptr: NonNull::new(ptr.cast()).unwrap(),
                len,
            }
        }
    }

    fn memory(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[test]
fn pool__child_process_produces_parent_drains__then_counts_match_exactly() {
    let config = PoolConfig {
        rings: 4,
        ring_capacity: 16 * 1024,
        kind: RecordKind::Fixed(32),
        policy: FullPolicy::Wait {
            timeout_us: 2_000_000,
        },
    };
    let mapping = SharedMapping::new(RingPool::<StdBackend>::layout_size(&config));
    // SAFETY: the mapping is fresh and page-aligned, and outlives the pool view.
    let pool = unsafe { RingPool::<StdBackend>::init(mapping.memory(), &config) }.unwrap();

    // SAFETY: the child only touches the shared mapping (atomics, memcpy), sleeps and exits with
    // _exit: nothing that needs a lock another thread of the test harness might hold.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        // The child attaches on its own, as the agent would, and produces.
        // SAFETY: the mapping is inherited; the child is the pool's only producer.
        let status = match unsafe { RingPool::<StdBackend>::attach(mapping.memory()) } {
            Ok(pool) => {
                // SAFETY: the only producer.
                let mut tx = unsafe { pool.producer() };
                let mut record = [0u8; 32];
                let mut failed = 0;
                for seq in 1..=RECORDS {
                    record[..8].copy_from_slice(&seq.to_le_bytes());
                    record[24..].copy_from_slice(&seq.to_le_bytes());
                    if tx.push(&record).is_err() {
                        failed = 1;
                    }
                }
                failed
            }
            Err(_) => 2,
        };
        // SAFETY: terminate the child without running the parent's atexit handlers.
        unsafe { libc::_exit(status) };
    }

    // SAFETY: the parent is the pool's only consumer.
    let mut rx = unsafe { pool.consumer() };
    let mut next = 1u64;
    let mut check = |chunk: ring::Chunk<'_>| -> Result<(), String> {
        for rec in chunk.bytes.chunks(32) {
            let a = u64::from_le_bytes(rec[..8].try_into().unwrap());
            let b = u64::from_le_bytes(rec[24..].try_into().unwrap());
            if a != next || b != next {
                return Err(format!("expected record {next}, got {a}/{b}"));
            }
            next += 1;
        }
        Ok(())
    };
    let mut status = 0;
    loop {
        rx.drain(true, &mut check).unwrap();
        // SAFETY: waitpid on our own child, non-blocking.
        let done = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if done == child {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    // The child is gone: its last records are in the active ring's committed prefix.
    rx.drain(true, &mut check).unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    assert_eq!(next - 1, RECORDS);
    let c = pool.counters();
    assert_eq!(c.accepted, RECORDS);
    assert_eq!(c.dropped_full, 0);
    assert!(c.swaps > 0, "the run never exercised swap-on-full");
    assert!(rx.is_empty());
}
