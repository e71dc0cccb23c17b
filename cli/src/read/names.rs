//! Function ids to names: the manifest's `symbols` first (short by default, see
//! [`symname::short_name`]), then `<module file>+0x<offset>` for an
//! address inside a listed module, else `0x<hex>`.

use std::collections::HashMap;

use atf::Manifest;

/// Names of a session's functions, resolved once per id.
#[derive(Debug)]
pub(crate) struct Names {
    known: HashMap<u64, String>,
    /// `(base, size, file name)`, sorted by base.
    modules: Vec<(u64, u64, String)>,
}

impl Names {
    /// The names `manifest` gives: short (`ns::Class::method`) unless `full`, then the whole
    /// signature as recorded.
    pub fn new(manifest: &Manifest, full: bool) -> Self {
        let mut known = HashMap::with_capacity(manifest.symbols.len());
        for symbol in &manifest.symbols {
            if let Some(id) = symbol.function_id() {
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
        Names { known, modules }
    }

    /// The name of `id`.
    pub fn get(&mut self, id: u64) -> &str {
        if !self.known.contains_key(&id) {
            let fallback = self.fallback(id);
            self.known.insert(id, fallback);
        }
        &self.known[&id]
    }

    /// A name for an id the symbols do not list.
    fn fallback(&self, id: u64) -> String {
        let i = self.modules.partition_point(|m| m.0 <= id);
        if i > 0 {
            let (base, size, file) = &self.modules[i - 1];
            if id - base < *size {
                return format!("{file}+{:#x}", id - base);
            }
        }
        format!("{id:#x}")
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
    }
}
