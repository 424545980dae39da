//! Criterion benchmarks for Peregrine (see `benches/`); this library is intentionally empty.
