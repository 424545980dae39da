//! The short fuzz run of every target that CI does (through `cargo test --workspace`): a few
//! seconds each (`PEREGRINE_FUZZ_SECONDS`, default 2), no panic, no execution whose heap grows
//! by more than 64 MiB. Long runs go by hand: `cargo run --release -p peregrine-fuzz -- run`.

use peregrine_fuzz::{all, fuzz, heap_allowance, Budget};
use peregrine_model::testkit::PeakAllocator;

#[global_allocator]
static HEAP: PeakAllocator = PeakAllocator;

fn meter(f: &mut dyn FnMut()) -> usize {
    PeakAllocator::peak_growth(f).1
}

#[test]
fn every_loader_survives_a_short_fuzz_run() {
    let seconds: f64 = std::env::var("PEREGRINE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let mut failures = Vec::new();
    for t in all() {
        let limit = (64 << 20) + heap_allowance(t.name);
        let r = fuzz(&t, Budget { runs: None, seconds: Some(seconds) }, 2026, Some((meter, limit)));
        eprintln!(
            "{}: {} executions, {} outcome classes, largest heap growth {:.1} MiB, {} findings",
            r.target,
            r.executions,
            r.classes,
            r.peak_heap as f64 / (1u64 << 20) as f64,
            r.findings.len()
        );
        assert!(r.executions > 20, "{}: only {} executions", r.target, r.executions);
        assert!(r.classes >= 2, "{}: the mutations never made the readers refuse anything", r.target);
        for f in r.findings {
            failures.push(format!(
                "{}: {} (input of {} bytes: {:?}…)",
                r.target,
                f.problem,
                f.input.len(),
                &f.input[..f.input.len().min(64)]
            ));
        }
    }
    assert!(failures.is_empty(), "fuzz findings:\n{}", failures.join("\n"));
}
