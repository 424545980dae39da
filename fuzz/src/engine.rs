//! A mutation fuzzer on stable Rust: starts from a target's seeds, applies one to four
//! mutations per input (bit flips, boundary bytes and integers written over what may be length
//! fields, cuts, insertions, duplicated or deleted ranges, splices of two inputs), runs the
//! target under `catch_unwind`, and keeps every input whose outcome class is new as a seed of
//! its own. Deterministic for a given seed: a finding is reproduced by the same command.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use crate::targets::Target;

/// How long to run: whichever limit comes first.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Executions.
    pub runs: Option<u64>,
    /// Seconds.
    pub seconds: Option<f64>,
}

/// An input that made the target panic or allocate too much.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The input.
    pub input: Vec<u8>,
    /// What went wrong.
    pub problem: String,
}

/// What one fuzzing run did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Target name.
    pub target: &'static str,
    /// Inputs run (seeds included).
    pub executions: u64,
    /// Wall time.
    pub seconds: f64,
    /// Inputs kept as seeds at the end.
    pub corpus: usize,
    /// Distinct outcome classes seen.
    pub classes: usize,
    /// Largest heap growth of one execution, in bytes (0 when not measured).
    pub peak_heap: usize,
    /// Panics and oversized allocations.
    pub findings: Vec<Finding>,
}

/// Measures one execution's heap growth: runs the closure, returns the bytes.
pub type HeapMeter = fn(&mut dyn FnMut()) -> usize;

/// splitmix64: small, fast and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values that break length and index arithmetic.
const BOUNDARY_U64: [u64; 12] =
    [0, 1, 2, 0x7f, 0xff, 0x100, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 40, u64::MAX];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    if input.is_empty() {
        input.push(rng.next() as u8);
        return;
    }
    let len = input.len();
    match rng.below(10) {
        0 | 1 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        2 => {
            let at = rng.below(len);
            input[at] = [0u8, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'"', b'{', b'-'][rng.below(10)];
        }
        3 => {
            // A boundary integer over 2, 4 or 8 bytes, either endianness.
            let width = [2usize, 4, 8][rng.below(3)];
            if len >= width {
                let at = rng.below(len - width + 1);
                let v =
                    if rng.below(4) == 0 { len as u64 + rng.below(3) as u64 - 1 } else { BOUNDARY_U64[rng.below(12)] };
                let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
                let bytes = if rng.below(2) == 0 { &bytes[..width] } else { &bytes[8 - width..] };
                input[at..at + width].copy_from_slice(bytes);
            }
        }
        4 => input.truncate(rng.below(len)),
        5 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            input.drain(at..end);
        }
        6 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
        7 => {
            let from = rng.below(len);
            let end = (from + 1 + rng.below(64)).min(len);
            let chunk = input[from..end].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, chunk);
        }
        8 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(32)).min(len);
            let byte = rng.next() as u8;
            input[at..end].fill(byte);
        }
        _ => {
            // Splice: this input's head, another's tail.
            if !other.is_empty() {
                let head = rng.below(len + 1);
                let tail = rng.below(other.len());
                input.truncate(head);
                input.extend_from_slice(&other[tail..]);
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

/// Runs `target` for `budget` from its seeds, with mutations drawn from `seed`. With a
/// `heap` meter, an execution whose heap grows beyond `heap_limit` bytes is a finding.
pub fn fuzz(target: &Target, budget: Budget, seed: u64, heap: Option<(HeapMeter, usize)>) -> Report {
    let started = Instant::now();
    let mut rng = Rng(seed ^ 0xA076_1D64_78BD_642F);
    let mut corpus = (target.seeds)();
    let mut classes = BTreeSet::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut seen_problems = BTreeSet::new();
    let mut executions = 0u64;
    let mut peak_heap = 0usize;
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut queue: Vec<Vec<u8>> = corpus.clone();
    loop {
        if budget.runs.is_some_and(|r| executions >= r)
            || budget.seconds.is_some_and(|s| started.elapsed().as_secs_f64() >= s)
        {
            break;
        }
        let input = match queue.pop() {
            Some(seed_input) => seed_input,
            None => {
                let mut x = corpus[rng.below(corpus.len())].clone();
                let other = corpus[rng.below(corpus.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    mutate(&mut rng, &mut x, &other);
                }
                x
            }
        };
        executions += 1;
        let mut outcome = None;
        let mut run = || outcome = Some(catch_unwind(AssertUnwindSafe(|| (target.run)(&input))));
        let grown = match heap {
            Some((meter, _)) => meter(&mut run),
            None => {
                run();
                0
            }
        };
        peak_heap = peak_heap.max(grown);
        let problem = match outcome.expect("the closure ran") {
            Ok(class) => {
                if classes.insert(class) && corpus.len() < 4096 {
                    corpus.push(input.clone());
                }
                heap.filter(|&(_, limit)| grown > limit)
                    .map(|(_, limit)| format!("heap grew by {} MiB (limit {} MiB)", grown >> 20, limit >> 20))
            }
            Err(payload) => Some(format!("panic: {}", panic_message(payload.as_ref()))),
        };
        if let Some(problem) = problem {
            // One finding per kind of problem (numbers blanked): the same bug at another length
            // is not news.
            let kind = crate::targets::blank_numbers(&problem);
            if seen_problems.insert(kind) {
                findings.push(Finding { input, problem });
            }
        }
    }
    std::panic::set_hook(previous_hook);
    Report {
        target: target.name,
        executions,
        seconds: started.elapsed().as_secs_f64(),
        corpus: corpus.len(),
        classes: classes.len(),
        peak_heap,
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragile(data: &[u8]) -> String {
        // Panics on a length field that claims more than the input has (a classic reader bug).
        if data.len() >= 4 && data[0] == b'L' {
            let n = data[1] as usize;
            let _ = data[2..2 + n].len();
        }
        "ok".into()
    }

    fn fragile_seeds() -> Vec<Vec<u8>> {
        vec![b"L\x02ab".to_vec()]
    }

    #[test]
    fn the_engine_finds_an_out_of_bounds_length_field_and_reproduces_it() {
        let t = Target { name: "fragile", about: "test", run: fragile, seeds: fragile_seeds };
        let r = fuzz(&t, Budget { runs: Some(20_000), seconds: None }, 7, None);
        assert_eq!(r.executions, 20_000);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert!(r.findings[0].problem.contains("panic"), "{:?}", r.findings[0]);
        let again = fuzz(&t, Budget { runs: Some(20_000), seconds: None }, 7, None);
        assert_eq!(again.findings[0].input, r.findings[0].input, "deterministic for a seed");
        assert!(std::panic::catch_unwind(|| fragile(&r.findings[0].input)).is_err());
    }

    #[test]
    fn mutations_change_inputs_in_every_way() {
        let mut rng = Rng(1);
        let (mut shorter, mut longer, mut same_len_changed) = (0, 0, 0);
        for _ in 0..2000 {
            let mut x = b"0123456789abcdef".to_vec();
            mutate(&mut rng, &mut x, b"XYZ");
            match x.len() {
                n if n < 16 => shorter += 1,
                n if n > 16 => longer += 1,
                _ if x != b"0123456789abcdef" => same_len_changed += 1,
                _ => {}
            }
        }
        assert!(shorter > 100 && longer > 100 && same_len_changed > 500, "{shorter} {longer} {same_len_changed}");
    }
}
