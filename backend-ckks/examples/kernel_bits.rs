//! One NTT and one base conversion (6 limbs to 6) per prime size, N = 2^16: what a limb costs
//! on the IFMA path (primes below 2^50) against the 64-bit one (the bootstrapping primes).
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p backend-ckks --example kernel_bits`
use backend_ckks::arith::ntt_primes;
use backend_ckks::ring::Ring;
use std::time::Instant;
/// Best of `reps` runs of `f`, in milliseconds.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut b = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b * 1e3
}
fn main() {
    backend_ckks::backend::tune_allocator();
    let n = 1u64 << 16;
    for bits in [40u32, 49, 50, 52, 55, 58, 60] {
        let q = ntt_primes(bits, 12, 2 * n, &[]);
        let ring = Ring::new(16, &q[..6], &q[6..]).unwrap();
        let mut limb: Vec<u64> = (0..n).map(|i| (i * 7919) % q[0]).collect();
        let t_ntt = best(20, || ring.ntt(&mut limb, 0));
        let src: Vec<u64> = (0..6).flat_map(|a| (0..n).map(move |i| (i * 31 + a) % (1 << 39))).collect();
        let from: Vec<usize> = (0..6).collect();
        let to: Vec<usize> = (6..12).collect();
        let t_conv = best(5, || {
            std::hint::black_box(ring.base_convert(&src, &from, &to));
        });
        println!("{bits} bits: NTT {t_ntt:.3} ms, convert 6->6 limbs {t_conv:.2} ms");
    }
}
