//! Pinned schedules: shuttle's printed replay strings, followed for as long as the code takes the
//! recorded path, then finished round-robin.
//!
//! shuttle's own `ReplayScheduler` panics as soon as the code under test takes another path (a
//! fix usually does), so a pinned failure could not stay in the suite once fixed. This scheduler
//! decodes the same string (format version 0x91: hex of a magic byte, three varints — task-id
//! width, step count, seed — and the bit-packed steps) and reproduces the recorded run exactly;
//! from the first step that no longer fits, it runs the runnable threads in turn, so the schedule
//! still completes and its invariants are checked.

use shuttle::scheduler::{DataSource, RandomDataSource, Schedule, Scheduler, Task, TaskId};

const MAGIC_V2: u8 = 0x91;

/// One recorded step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Run this task.
    Task(usize),
    /// A random value was drawn.
    Random,
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Decodes a printed schedule into its seed and steps; `None` if it is not one.
fn decode(encoded: &str) -> Option<(u64, Vec<Step>)> {
    let hex: Vec<u8> = encoded
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Vec<u8> = hex
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect::<Option<_>>()?;
    let (&magic, mut rest) = bytes.split_first()?;
    if magic != MAGIC_V2 {
        return None;
    }
    let width = varint(&mut rest)? as usize;
    let len = varint(&mut rest)? as usize;
    let seed = varint(&mut rest)?;
    let bit = |i: usize| rest.get(i / 8).map(|b| (b >> (i % 8)) & 1 == 1);
    let mut steps = Vec::with_capacity(len);
    let mut at = 0;
    while steps.len() < len {
        if bit(at)? {
            steps.push(Step::Random);
            at += 1;
        } else {
            let mut id = 0usize;
            for k in 0..width {
                id |= usize::from(bit(at + 1 + k)?) << k;
            }
            steps.push(Step::Task(id));
            at += 1 + width;
        }
    }
    Some((seed, steps))
}

/// Follows a recorded schedule, then round-robin (see the module documentation).
#[derive(Debug)]
pub(crate) struct Pinned {
    steps: Vec<Step>,
    at: usize,
    diverged: bool,
    started: bool,
    turn: usize,
    data: RandomDataSource,
}

impl Pinned {
    /// A scheduler for one run of `encoded`, as shuttle printed it. Panics on a string that is not
    /// a shuttle schedule (a pinned test with a broken string must fail loudly).
    pub(crate) fn new(encoded: &str) -> Self {
        let (seed, steps) = decode(encoded).expect("a shuttle schedule string (format 0x91)");
        Pinned {
            steps,
            at: 0,
            diverged: false,
            started: false,
            turn: 0,
            data: RandomDataSource::initialize(seed),
        }
    }

    /// Whether the run left the recorded path.
    #[cfg(test)]
    pub(crate) fn diverged(&self) -> bool {
        self.diverged
    }
}

impl Scheduler for Pinned {
    fn new_execution(&mut self) -> Option<Schedule> {
        if self.started {
            return None;
        }
        self.started = true;
        Some(Schedule::new(self.data.reinitialize()))
    }

    fn next_task(
        &mut self,
        runnable: &[&Task],
        _current: Option<TaskId>,
        _is_yielding: bool,
    ) -> Option<TaskId> {
        if !self.diverged {
            if let Some(&Step::Task(id)) = self.steps.get(self.at) {
                let id = TaskId::from(id);
                if runnable.iter().any(|t| t.id() == id) {
                    self.at += 1;
                    return Some(id);
                }
            }
            self.diverged = true;
        }
        self.turn = self.turn.wrapping_add(1);
        runnable
            .get(self.turn % runnable.len().max(1))
            .map(|t| t.id())
    }

    fn next_u64(&mut self) -> u64 {
        if !self.diverged {
            if let Some(Step::Random) = self.steps.get(self.at) {
                self.at += 1;
            } else {
                self.diverged = true;
            }
        }
        self.data.next_u64()
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn decode__printed_schedule__then_seed_and_steps() {
        // magic, width 2, 3 steps, seed 5; steps: Task(1) = 0b010, Random = 0b1, Task(3) = 0b110.
        // Bits (LSB first): 0,1,0 | 1 | 0,1,1 -> 0b0110_1010 = 0x6a.
        let (seed, steps) = decode("91 02 03 05 6a").unwrap();
        assert_eq!(seed, 5);
        assert_eq!(steps, vec![Step::Task(1), Step::Random, Step::Task(3)]);
    }

    #[test]
    fn decode__not_a_schedule__then_none() {
        assert_eq!(decode("zz"), None);
        assert_eq!(decode("90 01 01 00 00"), None);
        assert_eq!(decode("91 02 09 05 6a"), None);
    }

    #[test]
    fn pinned__random_step_where_task_recorded__then_diverges() {
        let mut p = Pinned::new("91 02 03 05 6a");
        assert!(p.new_execution().is_some());
        p.next_u64();
        assert!(p.diverged());
    }
}
