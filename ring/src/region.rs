//! Page-aligned, zeroed heap memory for rings and pools that live in one process (tests, models,
//! benchmarks, in-process tracing).

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};

/// A zeroed, page-aligned heap allocation, handed out as raw memory (like `memmap2::MmapRaw`): the
/// rings built in it are reached through raw pointers only.
#[derive(Debug)]
pub struct HeapRegion {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the region is plain memory; all shared access goes through the ring protocol.
unsafe impl Send for HeapRegion {}
// SAFETY: as above; `&HeapRegion` hands out only a raw pointer.
unsafe impl Sync for HeapRegion {}

impl HeapRegion {
    /// Allocates `len` zeroed bytes aligned to 4096. Aborts on allocation failure, like `Vec`.
    pub fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("region size overflows");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        HeapRegion { ptr, layout }
    }

    /// The region as a raw slice pointer, valid while `self` lives.
    pub fn as_non_null(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.layout.size())
    }

    /// The region's size in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether the region is empty (never: at least one byte is allocated).
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
