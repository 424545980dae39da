//! Shared by the OpenFHE tests: one workload over the whole backend surface.
#![allow(dead_code)]

use peregrine_backend::conformance::{receive, send};
use peregrine_backend::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const STEPS: [i64; 4] = [1, -3, 17, 100];

pub fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.gen_range(-1.0..1.0)).collect()
}

/// Runs one workload on any backend; returns (name, decrypted slots, level) per result.
pub fn workload<C: Client>(client: &C, server: &C::Backend, n: usize) -> Vec<(&'static str, Vec<f64>, usize)> {
    let caps = client.capabilities();
    let d = caps.default_scale();
    let (x, y) = (random(n, 1), random(n, 2));
    let (a, b) = (send(client, server, &x).unwrap(), send(client, server, &y).unwrap());
    let top = caps.max_level;
    let pt = server.encode(&y, top, d).unwrap();
    let mut out = Vec::new();
    let mut push = |name, ct: &<C::Backend as Backend>::Ciphertext| {
        let mut v = receive(client, server, ct).unwrap();
        v.truncate(n);
        out.push((name, v, server.level(ct)));
    };
    push("add", &server.add(&a, &b).unwrap());
    push("sub", &server.sub(&a, &b).unwrap());
    push("negate", &server.negate(&a).unwrap());
    push("add_plain", &server.add_plain(&a, &pt).unwrap());
    push("sub_plain", &server.sub_plain(&a, &pt).unwrap());
    push("add_scalar", &server.add_scalar(&a, 0.37).unwrap());
    push("mul_integer", &server.mul_integer(&a, -3).unwrap());
    let m = server.rescale(&server.mul(&a, &b).unwrap()).unwrap();
    push("mul+rescale", &m);
    push("square+rescale", &server.rescale(&server.square(&a).unwrap()).unwrap());
    push("mul_plain+rescale", &server.rescale(&server.mul_plain(&a, &pt).unwrap()).unwrap());
    let q = server.modulus(top);
    push("mul_scalar+rescale", &server.rescale(&server.mul_scalar(&a, -0.61, q).unwrap()).unwrap());
    push("drop_to_level", &server.drop_to_level(&a, top - 2).unwrap());
    // A product at the lower level with a plaintext encoded there: scale bookkeeping across levels.
    let pt2 = server.encode(&x, m.level_of(server), server.scale(&m)).unwrap();
    push("add_plain@lower", &server.add_plain(&m, &pt2).unwrap());
    for s in STEPS {
        push("rotate", &server.rotate(&a, s).unwrap());
    }
    for r in server.rotate_many(&a, &STEPS).unwrap() {
        push("rotate_many", &r);
    }
    push("eval_poly(d4)", &server.eval_poly(&a, &[0.1, 0.5, 0.25, -0.125, 0.05]).unwrap());
    out
}

pub trait LevelOf<B: Backend> {
    fn level_of(&self, b: &B) -> usize;
}
impl<B: Backend> LevelOf<B> for B::Ciphertext {
    fn level_of(&self, b: &B) -> usize {
        b.level(self)
    }
}
