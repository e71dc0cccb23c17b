//! Function ids to names: the manifest's `symbols` first (short by default, see
//! [`symname::short_name`]); then, for an address inside a symbol's function (the id an `mcount`
//! hook reports: its return address, just after the function's prologue), that symbol: inside its
//! recorded size, or, for a symbol recorded without one, within [`PROLOGUE_MAX`] bytes of its start
//! in the same module; then `<module file>+0x<offset>` for an address inside a listed module,
//! else `0x<hex>`.

use std::collections::HashMap;

use atf::Manifest;

/// How far past its function's first byte an `mcount` call can return (the prologue: frame
/// setup, saved registers, stack allocation): the limit for symbols recorded without a size.
const PROLOGUE_MAX: u64 = 512;

/// Names of a session's functions, resolved once per id.
#[derive(Debug)]
pub(crate) struct Names {
    known: HashMap<u64, String>,
    /// The symbols' addresses, sorted.
    starts: Vec<u64>,
    /// Sizes of the symbols that have one (from the manifest).
    sizes: HashMap<u64, u64>,
    /// `(base, size, file name)`, sorted by base.
    modules: Vec<(u64, u64, String)>,
    /// Ids no symbol names (shown as `file+0x<offset>` or `0x<hex>`).
    unnamed: std::collections::HashSet<u64>,
    /// Those of them shown (asked for with [`Names::get`]).
    shown_unnamed: std::collections::HashSet<u64>,
}

impl Names {
    /// The names `manifest` gives: short (`ns::Class::method`) unless `full`, then the whole
    /// signature as recorded.
    pub fn new(manifest: &Manifest, full: bool) -> Self {
        let mut known = HashMap::with_capacity(manifest.symbols.len());
        let mut sizes = HashMap::new();
        for symbol in &manifest.symbols {
            if let Some(id) = symbol.function_id() {
                if symbol.size > 0 {
                    sizes.entry(id).or_insert(symbol.size);
                }
                known.entry(id).or_insert_with(|| {
                    if full {
                        symbol.name.clone()
                    } else {
                        symname::short_name(&symbol.name)
                    }
                });
            }
        }
        let mut modules: Vec<(u64, u64, String)> = manifest
            .modules
            .iter()
            .filter(|m| m.size > 0)
            .map(|m| {
                let file = m.path.rsplit('/').next().unwrap_or(&m.path);
                (m.base_address, m.size, file.to_owned())
            })
            .collect();
        modules.sort_by_key(|m| m.0);
        let mut starts: Vec<u64> = known.keys().copied().collect();
        starts.sort_unstable();
        Names {
            known,
            starts,
            sizes,
            modules,
            unnamed: Default::default(),
            shown_unnamed: Default::default(),
        }
    }

    /// The name of `id`, as shown (see [`Names::unnamed_note`]).
    pub fn get(&mut self, id: u64) -> &str {
        self.resolve(id);
        if self.unnamed.contains(&id) {
            self.shown_unnamed.insert(id);
        }
        &self.known[&id]
    }

    /// The name of `id`, to match it against a filter (not counted as shown).
    pub fn peek(&mut self, id: u64) -> &str {
        self.resolve(id);
        &self.known[&id]
    }

    fn resolve(&mut self, id: u64) {
        if !self.known.contains_key(&id) {
            let (fallback, named) = self.fallback(id);
            if !named {
                self.unnamed.insert(id);
            }
            self.known.insert(id, fallback);
        }
    }

    /// The note said once after a listing that showed functions without a name, if it did.
    pub fn unnamed_note(&self) -> Option<String> {
        let unnamed = self.shown_unnamed.len();
        (unnamed > 0).then(|| {
            format!(
                "{} no name: no symbol of the objects the program reported covers {} \
                 (shown as file+offset, or as the address outside every object)",
                if unnamed == 1 {
                    "1 function has".to_owned()
                } else {
                    format!("{unnamed} functions have")
                },
                if unnamed == 1 { "it" } else { "them" }
            )
        })
    }

    /// A name for an id the symbols do not list, and whether it is a symbol's.
    fn fallback(&self, id: u64) -> (String, bool) {
        let module = |a: u64| {
            let i = self.modules.partition_point(|m| m.0 <= a);
            i.checked_sub(1)
                .filter(|&i| a - self.modules[i].0 < self.modules[i].1)
        };
        let s = self.starts.partition_point(|&a| a <= id);
        if let Some(&start) = s.checked_sub(1).and_then(|s| self.starts.get(s)) {
            let inside = match self.sizes.get(&start) {
                Some(&size) => id - start < size,
                None => id - start <= PROLOGUE_MAX && module(start) == module(id),
            };
            if inside {
                return (self.known[&start].clone(), true);
            }
        }
        let i = self.modules.partition_point(|m| m.0 <= id);
        if i > 0 {
            let (base, size, file) = &self.modules[i - 1];
            if id - base < *size {
                return (format!("{file}+{:#x}", id - base), false);
            }
        }
        (format!("{id:#x}"), false)
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use atf::{ClockType, Module, Symbol};

    #[test]
    fn names__symbol_module_or_nothing__then_name_offset_or_hex() {
        let mut m = Manifest::new(ClockType::Boottime);
        m.symbols.push(Symbol::new(1, 2, "main"));
        m.symbols.push(Symbol {
            function_id: "0x0000000000401000".into(),
            module_id: 0,
            symbol_index: 0,
            name: "compute".into(),
            size: 0,
        });
        // A sized symbol: ids inside it are it, ids past it are not (however close).
        m.symbols.push(Symbol {
            function_id: "0x0000000000501000".into(),
            module_id: 0,
            symbol_index: 1,
            name: "tiny".into(),
            size: 0x10,
        });
        m.modules.push(Module {
            module_id: 5,
            path: "/usr/lib/libfoo.so.1".into(),
            base_address: 0x7f00_0000_0000,
            size: 0x1000,
            uuid: String::new(),
        });
        let mut names = Names::new(&m, false);
        assert_eq!(names.get(atf::function_id(1, 2)), "main");
        assert_eq!(names.get(0x401000), "compute");
        assert_eq!(names.get(0x7f00_0000_0123), "libfoo.so.1+0x123");
        assert_eq!(names.get(0x7f00_0000_1000), "0x7f0000001000");
        assert_eq!(names.get(0x10), "0x10");
        assert_eq!(
            names.get(0x401000 + 0x1c),
            "compute",
            "an mcount return address"
        );
        assert_eq!(
            names.get(0x401000 + 0x1000),
            "0x402000",
            "too far past any symbol"
        );
        assert_eq!(names.get(0x501000 + 0xf), "tiny", "inside its size");
        assert_eq!(names.get(0x501000 + 0x10), "0x501010", "past its size");
        let note = names.unnamed_note().expect("unnamed ids were shown");
        assert!(note.starts_with("5 functions have no name"), "{note}");
        assert!(Names::new(&m, false).unnamed_note().is_none());
    }
}
