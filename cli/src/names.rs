//! The names of a recording: the region's module log read as it fills ([`Images`]),
//! `--trigger symbol=NAME` armed in each image before its program runs, and the one-line notes
//! about names that could not be had.
//!
//! Triggers: the tracer asks agents to wait for its acknowledgement after they report their
//! objects ([`registry::Registry::set_module_wait`], before the target starts). Each time new
//! objects come in, the trigger names are resolved in their image, the addresses (tagged with the
//! image) published, and only then the entries acknowledged, so the program's first call of a
//! trigger function already marks its window. A name found nowhere is said once, at the end.

use std::collections::BTreeSet;

use registry::Registry;

use crate::args::Trigger;
use crate::symbols::Images;

/// How often the tracer looks at the module log while agents may be waiting for it.
pub(crate) const TRIGGER_TICK: std::time::Duration = std::time::Duration::from_millis(2);

/// Names and triggers of one recording.
pub(crate) struct Names {
    /// Every image's modules and functions.
    pub(crate) images: Images,
    triggers: Vec<String>,
    /// Published trigger functions, `[start, end)`.
    armed: Vec<(u64, u64)>,
    /// Trigger names found in some image.
    found: BTreeSet<String>,
    /// Said already: more trigger addresses than the region holds.
    overflow_said: bool,
    /// Said already: the names could not be written beside the session's processes.
    persist_said: bool,
}

impl Names {
    /// Names for a recording with `triggers`. Spawn: call before the target starts, so its
    /// agent waits for the triggers (`wait`); attach does not wait (the tracer holds the thread
    /// that loads the agent).
    pub(crate) fn new(triggers: &[Trigger], reg: &Registry<'_>, wait: bool) -> Self {
        let triggers: Vec<String> = triggers
            .iter()
            .map(|Trigger::Symbol(name)| name.clone())
            .collect();
        reg.set_module_wait(wait && !triggers.is_empty());
        Names {
            images: Images::default(),
            triggers,
            armed: Vec::new(),
            found: BTreeSet::new(),
            overflow_said: false,
            persist_said: false,
        }
    }

    /// Whether agents may be waiting for the tracer (it should look often).
    pub(crate) fn has_triggers(&self) -> bool {
        !self.triggers.is_empty()
    }

    /// Reads new module log entries, arms the triggers they resolve, then acknowledges them.
    /// Returns whether any image gained modules.
    pub(crate) fn poll(&mut self, reg: &Registry<'_>, writers_gone: bool) -> bool {
        let changed = self.images.poll(reg, writers_gone);
        let gained = !changed.is_empty();
        let before = self.armed.len();
        for image in changed {
            for name in &self.triggers {
                let found = self.images.resolve(image, name);
                if !found.is_empty() {
                    self.found.insert(name.clone());
                }
                for range in found {
                    if !self.armed.iter().any(|a| a.0 == range.0) {
                        self.armed.push(range);
                    }
                }
            }
        }
        if self.armed.len() != before {
            let room = registry::MAX_TRIGGERS / 2;
            if self.armed.len() > room && !self.overflow_said {
                eprintln!(
                    "tracer: warning: the trigger names match {} functions, the region holds {}; \
                     the first {} are armed (name fewer or more precise functions)",
                    self.armed.len(),
                    room,
                    room
                );
                self.overflow_said = true;
            }
            let n = self.armed.len().min(room);
            let _ = reg.set_trigger_ranges(&self.armed[..n]);
        }
        reg.ack_modules(self.images.consumed());
        gained
    }

    /// Writes every image's modules and functions known so far into the session
    /// ([`atf::SessionLayout::write_names`]), so that a session whose tracer is killed before
    /// its final manifests still names its functions. A failure is said once; the final
    /// manifests carry the names all the same.
    pub(crate) fn persist(&mut self, layout: &atf::SessionLayout) {
        let mut names = atf::Manifest::new(atf::ClockType::Boottime);
        let all: BTreeSet<u32> = self.images.images.keys().copied().collect();
        self.images.fill_manifest(&all, &mut names);
        if let Err(e) = layout.write_names(&mut names) {
            if !self.persist_said {
                self.persist_said = true;
                eprintln!(
                    "tracer: warning: cannot write the names so far ({}); if the tracer is \
                     killed, the session shows its functions by address",
                    crate::read::clean(&e.to_string())
                );
            }
        }
    }

    /// The notes said once at the end: trigger names found nowhere, objects whose functions have
    /// no names (and why), reports the module log had no room for.
    pub(crate) fn notes(&self, reg: &Registry<'_>) -> Vec<String> {
        let mut out = Vec::new();
        for name in self.triggers.iter().filter(|n| !self.found.contains(*n)) {
            out.push(format!(
                "--trigger symbol={name}: no instrumented function of that name in the traced \
                 program; check the name with `nm -C`"
            ));
        }
        for s in self.images.skipped() {
            out.push(format!(
                "the functions of {} have no names ({})",
                s.path, s.reason
            ));
        }
        let lost = reg.modules_lost();
        if lost > 0 {
            out.push(format!(
                "{lost} loaded objects did not fit in the module log ({} entries); their \
                 functions have no names",
                registry::MODULE_LOG_CAPACITY
            ));
        }
        out
    }
}
