//! `peregrine-fuzz`: runs the fuzz targets by hand (long runs), replays a finding, or writes
//! the seed corpora (for cargo-fuzz). Exit status 1 when a run finds anything.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use peregrine_fuzz::{all, by_name, fuzz, heap_allowance, Budget};
use peregrine_model::testkit::PeakAllocator;

#[global_allocator]
static HEAP: PeakAllocator = PeakAllocator;

#[derive(Parser)]
#[command(about = "Fuzz Peregrine's loaders on stable Rust (see fuzz/README.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the targets.
    List,
    /// Fuzzes the named targets (all when none is named).
    Run {
        /// Targets.
        targets: Vec<String>,
        /// Executions per target.
        #[arg(long)]
        runs: Option<u64>,
        /// Seconds per target.
        #[arg(long)]
        seconds: Option<f64>,
        /// Seed of the mutations (same seed, same inputs).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Heap growth of one execution that counts as a finding, in MiB.
        #[arg(long, default_value_t = 64)]
        heap_limit_mib: usize,
        /// Where findings are written.
        #[arg(long, default_value = "fuzz-findings")]
        findings: PathBuf,
    },
    /// Runs one target on one file (a finding, or any file).
    Replay {
        /// Target.
        target: String,
        /// Input file.
        file: PathBuf,
    },
    /// Writes every target's seeds into DIR/<target>/ (the cargo-fuzz corpus layout).
    Seeds {
        /// Output directory.
        dir: PathBuf,
    },
}

fn meter(f: &mut dyn FnMut()) -> usize {
    PeakAllocator::peak_growth(f).1
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::List => {
            for t in all() {
                println!("{:<14} {}", t.name, t.about);
            }
            ExitCode::SUCCESS
        }
        Command::Run { targets, runs, seconds, seed, heap_limit_mib, findings } => {
            let chosen: Vec<_> = if targets.is_empty() {
                all()
            } else {
                let mut chosen = Vec::new();
                for name in &targets {
                    match by_name(name) {
                        Some(t) => chosen.push(t),
                        None => {
                            eprintln!("unknown target `{name}` (see `peregrine-fuzz list`)");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                chosen
            };
            let budget = Budget { runs, seconds: seconds.or(if runs.is_none() { Some(10.0) } else { None }) };
            let mut found = 0;
            for t in &chosen {
                let r = fuzz(t, budget, seed, Some((meter, (heap_limit_mib << 20) + heap_allowance(t.name))));
                println!(
                    "{:<14} {:>10} executions in {:>7.1} s ({:>7.0}/s), {:>4} outcome classes, corpus {:>4}, largest heap growth {:.1} MiB, {} findings",
                    r.target,
                    r.executions,
                    r.seconds,
                    r.executions as f64 / r.seconds.max(1e-9),
                    r.classes,
                    r.corpus,
                    r.peak_heap as f64 / (1u64 << 20) as f64,
                    r.findings.len()
                );
                for (i, f) in r.findings.iter().enumerate() {
                    let path = findings.join(format!("{}-{seed}-{i}", r.target));
                    let saved = std::fs::create_dir_all(&findings).and_then(|_| std::fs::write(&path, &f.input));
                    match saved {
                        Ok(()) => println!("  {}: {}", path.display(), f.problem),
                        Err(e) => println!("  (could not write {}: {e}) {}", path.display(), f.problem),
                    }
                }
                found += r.findings.len();
            }
            if found == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Replay { target, file } => {
            let Some(t) = by_name(&target) else {
                eprintln!("unknown target `{target}` (see `peregrine-fuzz list`)");
                return ExitCode::FAILURE;
            };
            let input = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            let (class, grown) = PeakAllocator::peak_growth(|| (t.run)(&input));
            println!("{class} (heap growth {:.1} MiB)", grown as f64 / (1u64 << 20) as f64);
            ExitCode::SUCCESS
        }
        Command::Seeds { dir } => {
            for t in all() {
                let d = dir.join(t.name);
                for (i, s) in (t.seeds)().iter().enumerate() {
                    if let Err(e) =
                        std::fs::create_dir_all(&d).and_then(|_| std::fs::write(d.join(format!("seed-{i}")), s))
                    {
                        eprintln!("{}: {e}", d.display());
                        return ExitCode::FAILURE;
                    }
                }
                println!("{}: {} seeds", d.display(), (t.seeds)().len());
            }
            ExitCode::SUCCESS
        }
    }
}
