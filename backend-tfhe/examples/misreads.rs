//! How often a bootstrap reads the wrong box, by extra accumulator bits k.
//!
//! With k > 0 a sum is read at a coarser resolution than it is computed: the bootstrap maps
//! `round(v / 2^k)` through the table, and the noise of the key switch and modulus switch (a
//! fixed fraction of a box, independent of the sum) can carry a value that sits near a box
//! boundary into the neighbouring box. Every integer sits at least half a unit inside its box
//! (see `LweServer::half_unit_shift`), so the misread rate falls steeply as k shrinks.
//!
//! For each k this encrypts values, adds bootstrapped encryptions of zero with integer
//! weights so the sum carries the largest noise the backend allows (the set's 2-norm bound),
//! bootstraps through the identity table on boxes and counts results that differ from the
//! integer simulation (`quant::apply_table`): once for values right next to a box boundary,
//! once for values drawn uniformly over the range (what a network's sums look like).
//!
//! `cargo run --release -p backend-tfhe --example misreads -- [bits] [samples] [k ...]`
//! (defaults: 5 bits, 200 samples of each kind, k = 2 3 4 6).

use std::time::Instant;

use backend_tfhe::lwe::{LweClient, LweParams};
use backend_tfhe::quant::apply_table;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

fn main() {
    let args: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let bits = args.first().copied().unwrap_or(5);
    let samples = args.get(1).copied().unwrap_or(200) as usize;
    let ks: Vec<u32> = if args.len() > 2 { args[2..].to_vec() } else { vec![2, 3, 4, 6] };
    println!("bits {bits}, {samples} samples per kind, sums at the noise bound");
    println!("k  noise_norm  boundary_misreads  uniform_misreads  uniform_rate  seconds");
    let mut rng = StdRng::seed_from_u64(7);
    for k in ks {
        let params = match LweParams::with_accumulator(bits, k) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("k = {k}: {e}");
                continue;
            }
        };
        let start = Instant::now();
        let client = LweClient::new(params);
        let server = client.server();
        let half_boxes = 1i64 << (bits - 1);
        let table: Vec<i64> = (-half_boxes..half_boxes).collect();
        let lut = server.lut(|b| b);
        // Noise: m encryptions of zero with weight w, 2-norm √(1 + m·w²) just under the bound.
        let m = 15usize;
        let w = (((params.noise_bound.powi(2) - 1.0) / m as f64).sqrt()).floor() as i64;
        // Bootstrapped zeros: a network's sums add bootstrap outputs, whose noise is larger
        // than a fresh encryption's.
        let zero_lut = server.lut(|_| 0);
        let zeros: Vec<_> =
            (0..m).map(|_| server.bootstrap(&client.encrypt(0).expect("zero is in range"), &zero_lut)).collect();
        let norm = (1.0 + (m as i64 * w * w) as f64).sqrt();
        let unit_box = 1i64 << k;
        // Boundary values: the integers on either side of the lower boundary of a random box
        // (not the outermost boxes, whose outer edge wraps negacyclically).
        let boundary: Vec<i64> = (0..samples)
            .map(|_| {
                let b = rng.gen_range(-half_boxes + 1..half_boxes);
                let edge = b * unit_box - unit_box / 2;
                if rng.gen_bool(0.5) {
                    edge
                } else {
                    edge - 1
                }
            })
            .collect();
        let (lo, hi) = params.range();
        let uniform: Vec<i64> = (0..samples).map(|_| rng.gen_range(lo + unit_box..=hi - unit_box)).collect();
        let count = |values: &[i64]| -> usize {
            values
                .par_iter()
                .filter(|&&v| {
                    let x = client.encrypt(v).expect("sample is in range");
                    let mut terms = vec![(&x, 1i64)];
                    terms.extend(zeros.iter().map(|z| (z, w)));
                    let sum = server.weighted_sum(&terms, 0).expect("the norm is within the bound");
                    let got = client.decrypt(&server.bootstrap(&sum, &lut));
                    got != apply_table(&table, v, bits, k)
                })
                .count()
        };
        let (nb, nu) = (count(&boundary), count(&uniform));
        println!(
            "{k:<2} {norm:>10.1}  {nb:>8}/{samples:<8}  {nu:>8}/{samples:<7}  {:>11.4}  {:>7.1}",
            nu as f64 / samples as f64,
            start.elapsed().as_secs_f64()
        );
    }
}
