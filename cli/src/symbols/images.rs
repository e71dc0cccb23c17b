//! Names per process image, from the region's module log (`registry::modules`): the agent of each
//! image reports the objects it has mapped (path, load bias, device/inode/mtime), and this reads
//! those files from disk at those biases. Nothing here reads `/proc`, so a target that ran for a
//! microsecond and is gone gets its names all the same.
//!
//! Function ids carry their image's tag (`registry::image_tag`), and so do the addresses here:
//! an exec'd program's functions are named from its own files even where its addresses equal its
//! parent's (`-no-pie`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use registry::{ModuleRecord, Registry};

use super::elf::{self, Magic, Want};
use super::{page_size, read_object, Capture, Skipped};

/// The modules of every process image seen in a recording, read as the log fills.
#[derive(Debug, Default)]
pub struct Images {
    /// Per image serial: its modules, their functions at tagged runtime addresses.
    pub images: BTreeMap<u32, Capture>,
    /// Per image serial: its executable's path.
    pub executables: BTreeMap<u32, String>,
    /// Entries `0..cursor` are consumed.
    cursor: u32,
    /// Entries at or past `cursor` already consumed (published out of order).
    consumed: BTreeSet<u32>,
}

impl Images {
    /// Reads the entries published since the last call. With `writers_gone` (the target and its
    /// children have exited, or acceptance stopped and the last pass runs), an entry still
    /// unpublished is given up (its writer died between claim and publication). Returns the
    /// images that gained modules.
    pub fn poll(&mut self, reg: &Registry<'_>, writers_gone: bool) -> BTreeSet<u32> {
        let mut changed = BTreeSet::new();
        let claimed = reg.modules_claimed();
        for i in self.cursor..claimed {
            if self.consumed.contains(&i) {
                continue;
            }
            match reg.module(i) {
                Some(record) => {
                    changed.insert(record.image);
                    self.add(&record);
                    self.consumed.insert(i);
                }
                None if writers_gone => {
                    self.consumed.insert(i);
                }
                None => {}
            }
        }
        while self.consumed.remove(&self.cursor) {
            self.cursor += 1;
        }
        changed
    }

    /// Entries consumed contiguously from the start: what the tracer acknowledges to waiting
    /// agents once the triggers they resolve are published.
    pub fn consumed(&self) -> u32 {
        self.cursor
    }

    fn add(&mut self, r: &ModuleRecord) {
        let path = String::from_utf8_lossy(&r.path).into_owned();
        let capture = self.images.entry(r.image).or_insert_with(|| Capture {
            pid: r.pid,
            ..Capture::default()
        });
        if r.flags & registry::MODULE_MAIN != 0 {
            self.executables.insert(r.image, path.clone());
        }
        let skip = |reason: String| Skipped {
            path: path.clone(),
            reason,
        };
        if r.flags & registry::MODULE_TRUNCATED != 0 {
            capture.skipped.push(skip(format!(
                "its path is longer than the module log's {} bytes",
                registry::MODULE_PATH_MAX
            )));
            return;
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                capture
                    .skipped
                    .push(skip(format!("it cannot be opened: {e}")));
                return;
            }
        };
        let same = file.metadata().is_ok_and(|m| {
            m.is_file()
                && (r.ino == 0 || (m.dev() == r.dev && m.ino() == r.ino))
                && (r.mtime_ns == 0 || mtime_ns(&m) == r.mtime_ns)
        });
        if !same {
            capture.skipped.push(skip(
                "it was replaced on disk after the program loaded it; rebuilt?".to_owned(),
            ));
            return;
        }
        let mut head = [0u8; 20];
        let n = std::io::Read::read(&mut &file, &mut head).unwrap_or(0);
        if elf::magic(&head[..n]) != Magic::ElfX86_64 {
            return;
        }
        let headers = match elf::read(Path::new(&path), &file, Want::Headers) {
            Ok(h) => h,
            Err(e) => {
                capture.skipped.push(skip(e.to_string()));
                return;
            }
        };
        let tag = registry::image_tag(r.image);
        match read_object(&path, &file, headers, &[r.bias], tag, page_size()) {
            Ok(modules) => capture.merge(Capture {
                modules,
                ..Capture::default()
            }),
            Err(skipped) => capture.skipped.push(skipped),
        }
    }

    /// Whether any image has an instrumented module.
    pub fn instrumented(&self) -> bool {
        self.images.values().any(Capture::instrumented)
    }

    /// The tagged `[start, end)` of the functions called `name` in `image` (see
    /// [`Capture::resolve_ranges`]).
    pub fn resolve(&self, image: u32, name: &str) -> Vec<(u64, u64)> {
        self.images
            .get(&image)
            .map(|c| c.resolve_ranges(name))
            .unwrap_or_default()
    }

    /// Fills `manifest`'s modules and symbols with those of `images` (the images a process ran).
    pub fn fill_manifest(&self, images: &BTreeSet<u32>, manifest: &mut atf::Manifest) {
        manifest.modules.clear();
        manifest.symbols.clear();
        for image in images {
            if let Some(c) = self.images.get(image) {
                manifest.modules.extend(c.manifest_modules());
                manifest.symbols.extend(c.manifest_symbols());
            }
        }
    }

    /// Every object that could not be read, once each (path, reason).
    pub fn skipped(&self) -> Vec<&Skipped> {
        let mut out: Vec<&Skipped> = Vec::new();
        for s in self.images.values().flat_map(|c| &c.skipped) {
            if !out.iter().any(|k| k.path == s.path) {
                out.push(s);
            }
        }
        out
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> u64 {
    (m.mtime() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec() as u64)
}
