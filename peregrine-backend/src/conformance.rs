//! The backend conformance suite (feature `conformance`): what every backend must do the same.
//!
//! One call runs every check on a [`Scheme`] with the parameters its tests use and returns a
//! [`Report`]; [`Report::assert_passed`] prints it and fails the test on any failure:
//!
//! ```text
//! #[test]
//! fn conformance() {
//!     peregrine_backend::conformance::run::<MyScheme>(&MyParams::for_tests(), 20.0).assert_passed();
//! }
//! ```
//!
//! What it checks, on deterministic values in [−1, 1] of odd lengths (1, 37, 1001 where the
//! slots allow, and every slot):
//! - **primitives** against the same computation on plain `f64` (what `clear` computes): every
//!   result within the stated precision (bits, relative to max(1, |largest expected value|)),
//!   with the level and scale CKKS prescribes;
//! - **rules**: every violation (levels, scales, a rescale at level 0, a missing rotation key,
//!   bootstrapping without keys, too many values, non-finite input, too few levels for a
//!   polynomial) is the matching [`BackendError`], never a panic or a silent result;
//! - **serialisation**: ciphertexts between client and server, evaluation keys (whole,
//!   streamed, from a file), the client's saved secret;
//! - **keys**: two key generations give different keys (a ciphertext of one never decrypts
//!   correctly under the other); missing keys are errors;
//! - **corrupted bytes**: empty, truncated and mislabelled ciphertexts, keys and secrets are errors.
//!
//! Parameters need at least 4 levels and 64 slots. A check whose prerequisite the backend does
//! not offer (saving its client, bootstrapping) is reported as skipped, with the reason.

use std::collections::BTreeSet;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{normalize_rotation, BResult, Backend, BackendError, Capabilities, Client, KeyRequest, Scheme};

type Ct<S> = <<S as Scheme>::Server as Backend>::Ciphertext;

/// Rotation steps the suite requests keys for.
pub const STEPS: [i64; 4] = [1, -3, 17, 40];

/// How one check ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Passed; the detail says what was measured.
    Passed(String),
    /// Failed, with the reason.
    Failed(String),
    /// Not applicable to this backend, with the reason.
    Skipped(String),
}

/// One check and its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// Short name.
    pub name: &'static str,
    /// What happened.
    pub outcome: Outcome,
}

/// The result of [`run`].
#[derive(Clone, Debug)]
pub struct Report {
    /// The scheme's name.
    pub backend: &'static str,
    /// The precision the primitives were held to, in bits.
    pub precision_bits: f64,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// The checks that failed.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| matches!(c.outcome, Outcome::Failed(_))).collect()
    }
    /// The checks that were skipped.
    pub fn skipped(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| matches!(c.outcome, Outcome::Skipped(_))).collect()
    }
    /// Prints the report on stderr and panics (failing the calling test) if any check failed.
    pub fn assert_passed(&self) {
        eprintln!("{self}");
        let failed = self.failures();
        assert!(
            failed.is_empty(),
            "{} of {} conformance checks failed for '{}' (see above)",
            failed.len(),
            self.checks.len(),
            self.backend
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance of '{}' (primitives held to {:.1} bits):", self.backend, self.precision_bits)?;
        for c in &self.checks {
            let (tag, text) = match &c.outcome {
                Outcome::Passed(d) => ("ok     ", d),
                Outcome::Failed(d) => ("FAILED ", d),
                Outcome::Skipped(d) => ("skipped", d),
            };
            writeln!(f, "  {tag} {:<24} {text}", c.name)?;
        }
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.checks.iter().filter(|c| matches!(c.outcome, Outcome::Passed(_))).count(),
            self.failures().len(),
            self.skipped().len()
        )
    }
}

/// Runs every check on `S` with `params` (at least 4 levels and 64 slots), holding primitive
/// results to `precision_bits` of precision.
pub fn run<S: Scheme>(params: &S::Params, precision_bits: f64) -> Report {
    let mut report = Report { backend: S::NAME, precision_bits, checks: Vec::new() };
    let setup = catch_unwind(AssertUnwindSafe(|| Setup::<S>::new(params)));
    let setup = match setup {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            report.checks.push(Check { name: "setup", outcome: Outcome::Failed(e) });
            return report;
        }
        Err(p) => {
            report.checks.push(Check { name: "setup", outcome: Outcome::Failed(panic_text(p)) });
            return report;
        }
    };
    type CheckFn<S> = fn(&Setup<S>, f64) -> Result<Outcome, String>;
    let checks: [(&'static str, CheckFn<S>); 8] = [
        ("capabilities", capabilities::<S>),
        ("primitives", primitives::<S>),
        ("polynomial", polynomial::<S>),
        ("rule violations", rules::<S>),
        ("serialisation", serialisation::<S>),
        ("foreign keys", foreign_keys::<S>),
        ("corrupted bytes", corrupted::<S>),
        ("bootstrapping", bootstrapping::<S>),
    ];
    for (name, check) in checks {
        let outcome = match catch_unwind(AssertUnwindSafe(|| check(&setup, precision_bits))) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => Outcome::Failed(e),
            Err(p) => Outcome::Failed(format!("panicked: {}", panic_text(p))),
        };
        report.checks.push(Check { name, outcome });
    }
    report
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Keys, a server from the serialised evaluation keys, and the facts every check needs.
struct Setup<S: Scheme> {
    params: S::Params,
    caps: Capabilities,
    client: S::Client,
    server: S::Server,
    request: KeyRequest,
}

impl<S: Scheme> Setup<S> {
    fn new(params: &S::Params) -> Result<Self, String> {
        let caps = S::capabilities(params).map_err(|e| format!("capabilities: {e}"))?;
        if caps.max_level < 4 || caps.slots < 64 {
            return Err(format!(
                "the suite needs at least 4 levels and 64 slots, these parameters give {} and {}",
                caps.max_level, caps.slots
            ));
        }
        let request = KeyRequest::rotations(STEPS.iter().map(|&s| normalize_rotation(s, caps.slots)));
        let client = S::keygen(params, &request).map_err(|e| format!("keygen: {e}"))?;
        let keys = client.evaluation_keys().map_err(|e| format!("evaluation keys: {e}"))?;
        let server = S::server(&keys).map_err(|e| format!("server from evaluation keys: {e}"))?;
        Ok(Setup { params: params.clone(), caps, client, server, request })
    }

    /// Test lengths: 1, 37, 1001 (where they fit) and every slot.
    fn lengths(&self) -> Vec<usize> {
        let mut v: Vec<usize> = [1, 37, 1001].into_iter().filter(|&n| n < self.caps.slots).collect();
        v.push(self.caps.slots);
        v
    }

    fn encrypt(&self, values: &[f64]) -> BResult<Ct<S>> {
        send(&self.client, &self.server, values)
    }

    fn decrypt(&self, ct: &Ct<S>) -> BResult<Vec<f64>> {
        receive(&self.client, &self.server, ct)
    }
}

/// A fresh encryption of `values` by `client`, handed to `server` as bytes (as over a network).
pub fn send<C: Client>(
    client: &C,
    server: &C::Backend,
    values: &[f64],
) -> BResult<<C::Backend as Backend>::Ciphertext> {
    server.deserialize_ciphertext(&client.serialize_ciphertext(&client.encrypt_values(values)?)?)
}

/// What `client` decrypts (every slot) from a ciphertext of `server`, handed over as bytes.
pub fn receive<C: Client>(
    client: &C,
    server: &C::Backend,
    ct: &<C::Backend as Backend>::Ciphertext,
) -> BResult<Vec<f64>> {
    client.decrypt_values(&client.deserialize_ciphertext(&server.serialize_ciphertext(ct)?)?)
}

/// The shared library of crate `stem` built by cargo beside the running test binary (for
/// plugin tests: `built_library("backend_clear")` is `target/…/libbackend_clear.so`).
pub fn built_library(stem: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let deps = exe.parent().expect("the test binary is in a directory");
    let name = format!("{}{stem}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let found = [Some(deps), deps.parent()].into_iter().flatten().map(|d| d.join(&name)).find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} was not built next to {}", exe.display()))
}

/// Deterministic values in [−1, 1) (a 64-bit mixing sequence), `n` of them.
pub fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn padded(v: &[f64], slots: usize) -> Vec<f64> {
    let mut out = v.to_vec();
    out.resize(slots, 0.0);
    out
}

/// Bits of precision of `got` against `want`, relative to max(1, max |want|).
fn bits(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    if got.len() != want.len() {
        return f64::NEG_INFINITY;
    }
    -(err / scale).max(1e-300).log2()
}

/// Tracks the worst precision over many comparisons.
struct Precision {
    need: f64,
    worst: f64,
    worst_at: String,
}

impl Precision {
    fn new(need: f64) -> Self {
        Precision { need, worst: f64::INFINITY, worst_at: String::new() }
    }
    fn check(&mut self, what: &str, got: &[f64], want: &[f64]) -> Result<(), String> {
        let b = bits(got, want);
        if b < self.worst {
            self.worst = b;
            self.worst_at = what.to_string();
        }
        if !(b >= self.need) {
            return Err(format!("{what}: {b:.1} bits, below the stated {:.1}", self.need));
        }
        Ok(())
    }
    fn summary(&self, count: usize) -> String {
        if self.worst > 900.0 {
            return format!("{count} results, all exact");
        }
        format!("{count} results, worst {:.1} bits ({})", self.worst, self.worst_at)
    }
}

fn meta_is<S: Scheme>(s: &Setup<S>, what: &str, ct: &Ct<S>, level: usize, scale: f64) -> Result<(), String> {
    let (l, sc) = (s.server.level(ct), s.server.scale(ct));
    if l != level || ((sc - scale) / scale).abs() > 1e-9 {
        return Err(format!(
            "{what}: level {l} and scale 2^{:.4}, CKKS prescribes level {level} and scale 2^{:.4}",
            sc.log2(),
            scale.log2()
        ));
    }
    Ok(())
}

fn e(what: &str) -> impl Fn(BackendError) -> String + '_ {
    move |err| format!("{what}: {err}")
}

fn capabilities<S: Scheme>(s: &Setup<S>, _: f64) -> Result<Outcome, String> {
    let (c, client, server) = (&s.caps, s.client.capabilities(), s.server.capabilities());
    for (who, other) in [("client", &client), ("server", &server)] {
        if (other.backend.as_str(), other.slots, other.max_level, other.ring_dimension)
            != (c.backend.as_str(), c.slots, c.max_level, c.ring_dimension)
        {
            return Err(format!("the {who}'s capabilities differ from the scheme's for the same parameters"));
        }
    }
    if c.backend != S::NAME {
        return Err(format!("capabilities name the backend '{}', the scheme is '{}'", c.backend, S::NAME));
    }
    if c.log_moduli.len() != c.max_level + 1 {
        return Err(format!("{} moduli listed for levels 0..={}", c.log_moduli.len(), c.max_level));
    }
    if !(c.log_scale.is_finite() && c.log_scale >= 1.0) {
        return Err(format!("log_scale {} is not a usable scale", c.log_scale));
    }
    let want: BTreeSet<i64> = s.request.rotations.iter().copied().filter(|&r| r != 0).collect();
    let have: BTreeSet<i64> = s.server.rotation_steps().into_iter().filter(|&r| r != 0).collect();
    if want != have {
        return Err(format!("the server has rotation keys {have:?}, the request was {want:?}"));
    }
    for level in 1..=c.max_level {
        let q = s.server.modulus(level);
        if !(q > 1.0 && q.is_finite()) {
            return Err(format!("modulus at level {level} is {q}"));
        }
    }
    Ok(Outcome::Passed(format!("{} slots, {} levels, security {:?}", c.slots, c.max_level, c.security_bits)))
}

fn primitives<S: Scheme>(s: &Setup<S>, need: f64) -> Result<Outcome, String> {
    let (srv, slots, top) = (&s.server, s.caps.slots, s.caps.max_level);
    let delta = s.caps.default_scale();
    let q = srv.modulus(top);
    let mut p = Precision::new(need);
    let mut count = 0;
    for (k, n) in s.lengths().into_iter().enumerate() {
        let (x, y) = (values(n, 2 * k as u64 + 1), values(n, 2 * k as u64 + 2));
        let (xs, ys) = (padded(&x, slots), padded(&y, slots));
        let a = s.encrypt(&x).map_err(e("encrypt"))?;
        let b = s.encrypt(&y).map_err(e("encrypt"))?;
        meta_is(s, "fresh ciphertext", &a, top, delta)?;
        let pt = srv.encode(&y, top, delta).map_err(e("encode"))?;
        let zip = |f: fn(f64, f64) -> f64| -> Vec<f64> { xs.iter().zip(&ys).map(|(a, b)| f(*a, *b)).collect() };
        let map = |f: &dyn Fn(f64) -> f64| -> Vec<f64> { xs.iter().map(|v| f(*v)).collect() };
        let mut cmp = |what: &str, ct: &Ct<S>, want: &[f64], level: usize, scale: f64| -> Result<(), String> {
            let what = format!("{what} (n = {n})");
            meta_is(s, &what, ct, level, scale)?;
            count += 1;
            p.check(&what, &s.decrypt(ct).map_err(e(&what))?, want)
        };
        cmp("encrypt/decrypt", &a, &xs, top, delta)?;
        cmp("add", &srv.add(&a, &b).map_err(e("add"))?, &zip(|a, b| a + b), top, delta)?;
        cmp("sub", &srv.sub(&a, &b).map_err(e("sub"))?, &zip(|a, b| a - b), top, delta)?;
        cmp("negate", &srv.negate(&a).map_err(e("negate"))?, &map(&|v| -v), top, delta)?;
        cmp("add_plain", &srv.add_plain(&a, &pt).map_err(e("add_plain"))?, &zip(|a, b| a + b), top, delta)?;
        cmp("sub_plain", &srv.sub_plain(&a, &pt).map_err(e("sub_plain"))?, &zip(|a, b| a - b), top, delta)?;
        cmp("add_scalar", &srv.add_scalar(&a, 0.37).map_err(e("add_scalar"))?, &map(&|v| v + 0.37), top, delta)?;
        cmp("mul_integer", &srv.mul_integer(&a, -3).map_err(e("mul_integer"))?, &map(&|v| -3.0 * v), top, delta)?;
        let prod = delta * delta / q;
        let m = srv.rescale(&srv.mul(&a, &b).map_err(e("mul"))?).map_err(e("rescale"))?;
        cmp("mul + rescale", &m, &zip(|a, b| a * b), top - 1, prod)?;
        let sq = srv.rescale(&srv.square(&a).map_err(e("square"))?).map_err(e("rescale"))?;
        cmp("square + rescale", &sq, &map(&|v| v * v), top - 1, prod)?;
        let mp = srv.rescale(&srv.mul_plain(&a, &pt).map_err(e("mul_plain"))?).map_err(e("rescale"))?;
        cmp("mul_plain + rescale", &mp, &zip(|a, b| a * b), top - 1, prod)?;
        // Σ a_i·p_i over three products (a, b, a with y, x, y): what a fused backend must match.
        let px = srv.encode(&x, top, delta).map_err(e("encode"))?;
        let terms = [(&a, &pt), (&b, &px), (&a, &pt)];
        let dot = srv.rescale(&srv.mul_plain_sum(&terms).map_err(e("mul_plain_sum"))?).map_err(e("rescale"))?;
        cmp("mul_plain_sum + rescale", &dot, &zip(|a, b| 2.0 * a * b + b * a), top - 1, prod)?;
        let ms = srv.rescale(&srv.mul_scalar(&a, -0.61, q).map_err(e("mul_scalar"))?).map_err(e("rescale"))?;
        cmp("mul_scalar + rescale", &ms, &map(&|v| -0.61 * v), top - 1, delta)?;
        cmp("drop_to_level", &srv.drop_to_level(&a, top - 2).map_err(e("drop_to_level"))?, &xs, top - 2, delta)?;
        // A plaintext met at a lower level and an odd scale: the bookkeeping follows the ciphertext.
        let pt2 = srv.encode(&x, top - 1, srv.scale(&m)).map_err(e("encode at a lower level"))?;
        let lower = srv.add_plain(&m, &pt2).map_err(e("add_plain at a lower level"))?;
        cmp(
            "add_plain at level - 1",
            &lower,
            &xs.iter().zip(&ys).map(|(a, b)| a * b + a).collect::<Vec<_>>(),
            top - 1,
            prod,
        )?;
        let rotated: Vec<Ct<S>> = srv.rotate_many(&a, &STEPS).map_err(e("rotate_many"))?;
        if rotated.len() != STEPS.len() {
            return Err(format!("rotate_many returned {} ciphertexts for {} steps", rotated.len(), STEPS.len()));
        }
        for (&step, r) in STEPS.iter().zip(&rotated) {
            let want: Vec<f64> = (0..slots).map(|i| xs[(i as i64 + step).rem_euclid(slots as i64) as usize]).collect();
            cmp(&format!("rotate({step})"), &srv.rotate(&a, step).map_err(e("rotate"))?, &want, top, delta)?;
            cmp(&format!("rotate_many({step})"), r, &want, top, delta)?;
        }
        // Σ rot(·, step) over two ciphertexts and a repeated step, one of them 0.
        let terms = [(&a, STEPS[0]), (&b, STEPS[2]), (&a, 0), (&b, STEPS[0]), (&a, STEPS[1])];
        let want: Vec<f64> = (0..slots)
            .map(|i| {
                terms
                    .iter()
                    .map(|(c, step)| {
                        let v = if std::ptr::eq(*c, &a) { &xs } else { &ys };
                        v[(i as i64 + step).rem_euclid(slots as i64) as usize]
                    })
                    .sum()
            })
            .collect();
        cmp("rotate_sum", &srv.rotate_sum(&terms).map_err(e("rotate_sum"))?, &want, top, delta)?;
        let low_sum = srv.rotate_sum(&[(&m, STEPS[3]), (&m, STEPS[1])]).map_err(e("rotate_sum below the top"))?;
        let mv = zip(|a, b| a * b);
        let want: Vec<f64> = (0..slots)
            .map(|i| [STEPS[3], STEPS[1]].iter().map(|st| mv[(i as i64 + st).rem_euclid(slots as i64) as usize]).sum())
            .collect();
        cmp("rotate_sum at level - 1", &low_sum, &want, top - 1, prod)?;
    }
    Ok(Outcome::Passed(p.summary(count)))
}

fn polynomial<S: Scheme>(s: &Setup<S>, need: f64) -> Result<Outcome, String> {
    let coeffs = [0.1, 0.5, 0.25, -0.125, 0.05];
    let x = values(s.caps.slots.min(1001), 11);
    let a = s.encrypt(&x).map_err(e("encrypt"))?;
    let r = s.server.eval_poly(&a, &coeffs).map_err(e("eval_poly"))?;
    let want: Vec<f64> =
        padded(&x, s.caps.slots).iter().map(|v| coeffs.iter().rev().fold(0.0, |acc, c| acc * v + c)).collect();
    let mut p = Precision::new(need);
    p.check("eval_poly (degree 4)", &s.decrypt(&r).map_err(e("decrypt"))?, &want)?;
    if s.server.level(&r) >= s.caps.max_level {
        return Err("eval_poly of degree 4 used no level".into());
    }
    Ok(Outcome::Passed(p.summary(1)))
}

/// Requires `r` to be an error matching `ok`, naming `what` otherwise.
fn refused<T>(what: &str, r: BResult<T>, ok: fn(&BackendError) -> bool, expected: &str) -> Result<(), String> {
    match r {
        Ok(_) => Err(format!("{what} was accepted; expected {expected}")),
        Err(err) if ok(&err) => Ok(()),
        Err(err) => Err(format!("{what} gave '{err}'; expected {expected}")),
    }
}

/// A result without its value.
fn unit<T>(r: BResult<T>) -> BResult<()> {
    r.map(|_| ())
}

fn rules<S: Scheme>(s: &Setup<S>, _: f64) -> Result<Outcome, String> {
    use BackendError as E;
    let (srv, cl, top, slots) = (&s.server, &s.client, s.caps.max_level, s.caps.slots);
    let delta = s.caps.default_scale();
    let x = values(37, 21);
    let a = s.encrypt(&x).map_err(e("encrypt"))?;
    let low = srv.drop_to_level(&a, top - 1).map_err(e("drop_to_level"))?;
    let one = srv.drop_to_level(&a, 1).map_err(e("drop_to_level"))?;
    let bottom = srv.drop_to_level(&a, 0).map_err(e("drop_to_level"))?;
    let wide = srv.mul_scalar(&a, 1.0, 2.0).map_err(e("mul_scalar"))?;
    let pt_low = srv.encode(&x, top - 1, delta).map_err(e("encode"))?;
    let pt_odd = srv.encode(&x, top, delta * 2.0).map_err(e("encode"))?;
    let keys: BTreeSet<i64> = s.request.rotations.clone();
    let missing = (2..slots as i64).find(|k| !keys.contains(&normalize_rotation(*k, slots))).unwrap_or(2);
    let too_many = vec![0.5; slots + 1];
    type Rule<'a> = (&'a str, BResult<()>, fn(&E) -> bool, &'a str);
    let level: fn(&E) -> bool = |r| matches!(r, E::LevelMismatch { .. });
    let scale: fn(&E) -> bool = |r| matches!(r, E::ScaleMismatch { .. });
    let exhausted: fn(&E) -> bool = |r| matches!(r, E::LevelsExhausted { .. });
    let range: fn(&E) -> bool = |r| matches!(r, E::OutOfRange { .. } | E::InvalidParameters(_));
    let any_of_level_or_scale: fn(&E) -> bool = |r| matches!(r, E::LevelMismatch { .. } | E::ScaleMismatch { .. });
    let key: fn(&E) -> bool = |r| matches!(r, E::MissingRotationKey(_));
    let count: fn(&E) -> bool = |r| matches!(r, E::TooManyValues { .. });
    let boot: fn(&E) -> bool = |r| matches!(r, E::BootstrapUnsupported | E::BootstrapNotEnabled);
    let any: fn(&E) -> bool = |_| true;
    let mut rules: Vec<Rule> = vec![
        ("add at two levels", unit(srv.add(&a, &low)), level, "LevelMismatch"),
        ("sub at two levels", unit(srv.sub(&a, &low)), level, "LevelMismatch"),
        ("mul at two levels", unit(srv.mul(&a, &low)), level, "LevelMismatch"),
        ("add at two scales", unit(srv.add(&a, &wide)), scale, "ScaleMismatch"),
        ("add_plain at two levels", unit(srv.add_plain(&a, &pt_low)), level, "LevelMismatch"),
        ("sub_plain at two scales", unit(srv.sub_plain(&a, &pt_odd)), scale, "ScaleMismatch"),
        ("mul_plain at two levels", unit(srv.mul_plain(&a, &pt_low)), level, "LevelMismatch"),
        (
            "mul_plain_sum of products at two scales",
            unit(srv.mul_plain_sum(&[(&a, &pt_odd), (&a, &pt_odd), (&low, &pt_low)])),
            any_of_level_or_scale,
            "LevelMismatch or ScaleMismatch",
        ),
        ("mul_plain_sum of no terms", unit(srv.mul_plain_sum(&[])), range, "OutOfRange"),
        ("rescale at level 0", unit(srv.rescale(&bottom)), exhausted, "LevelsExhausted"),
        ("drop_to_level above the ciphertext", unit(srv.drop_to_level(&low, top)), exhausted, "LevelsExhausted"),
        (
            "eval_poly of degree 4 at level 1",
            unit(srv.eval_poly(&one, &[0.0, 1.0, 0.0, 0.0, 1.0])),
            exhausted,
            "LevelsExhausted",
        ),
        ("a rotation without its key", unit(srv.rotate(&a, missing)), key, "MissingRotationKey"),
        ("rotate_many with a missing key", unit(srv.rotate_many(&a, &[1, missing])), key, "MissingRotationKey"),
        ("rotate_sum with a missing key", unit(srv.rotate_sum(&[(&a, 1), (&a, missing)])), key, "MissingRotationKey"),
        ("rotate_sum at two levels", unit(srv.rotate_sum(&[(&a, 1), (&low, 1)])), level, "LevelMismatch"),
        ("rotate_sum at two scales", unit(srv.rotate_sum(&[(&a, 1), (&wide, 1)])), scale, "ScaleMismatch"),
        ("rotate_sum of no terms", unit(srv.rotate_sum(&[])), range, "OutOfRange"),
        (
            "bootstrap without bootstrapping keys",
            unit(srv.bootstrap(&a)),
            boot,
            "BootstrapUnsupported or BootstrapNotEnabled",
        ),
        ("encoding more values than slots", unit(cl.encode(&too_many, top, delta)), count, "TooManyValues"),
        ("server encoding more values than slots", unit(srv.encode(&too_many, top, delta)), count, "TooManyValues"),
        ("encoding above the fresh level", unit(cl.encode(&x, top + 1, delta)), range, "OutOfRange"),
        ("encoding a NaN", unit(cl.encode(&[f64::NAN], top, delta)), range, "OutOfRange"),
        ("encoding at scale 0", unit(cl.encode(&x, top, 0.0)), range, "OutOfRange"),
        ("mul_scalar by infinity", unit(srv.mul_scalar(&a, f64::INFINITY, delta)), range, "OutOfRange"),
        ("add_scalar of a NaN", unit(srv.add_scalar(&a, f64::NAN)), range, "OutOfRange"),
        ("eval_poly with a NaN coefficient", unit(srv.eval_poly(&a, &[0.0, f64::NAN])), any, "an error"),
    ];
    if !s.caps.can_bootstrap {
        let request = KeyRequest { rotations: BTreeSet::new(), bootstrap: true, ..Default::default() };
        let keygen = unit(S::keygen(&s.params, &request));
        rules.push(("requesting bootstrapping keys from parameters without bootstrapping", keygen, any, "an error"));
    }
    let n = rules.len();
    for (what, r, ok, expected) in rules {
        refused(what, r, ok, expected)?;
    }
    Ok(Outcome::Passed(format!("{n} violations refused with the matching error")))
}

/// A file in the temporary directory whose name no other test of any process shares (process id,
/// a per-process counter and the clock), removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(scheme: &str, ext: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("peregrine-conformance-{scheme}-{}-{n}-{nanos}.{ext}", std::process::id());
        TempFile(std::env::temp_dir().join(name))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn serialisation<S: Scheme>(s: &Setup<S>, need: f64) -> Result<Outcome, String> {
    let x = values(37, 31);
    let xs = padded(&x, s.caps.slots);
    let mut p = Precision::new(need);
    // Ciphertexts: client → server → client, level and scale kept.
    let ct = s.client.encrypt_values(&x).map_err(e("encrypt"))?;
    let low = s.server.drop_to_level(&s.encrypt(&x).map_err(e("encrypt"))?, 1).map_err(e("drop"))?;
    let again = s
        .server
        .deserialize_ciphertext(&s.server.serialize_ciphertext(&low).map_err(e("serialise"))?)
        .map_err(e("deserialise"))?;
    meta_is(s, "server round trip", &again, 1, s.server.scale(&low))?;
    p.check("server round trip", &s.decrypt(&again).map_err(e("decrypt"))?, &xs)?;
    // Evaluation keys: whole, streamed, and from a file give the same server.
    let whole = s.client.evaluation_keys().map_err(e("evaluation keys"))?;
    let mut streamed = Vec::new();
    s.client.write_evaluation_keys(&mut streamed).map_err(e("write_evaluation_keys"))?;
    if streamed != whole {
        return Err("write_evaluation_keys wrote other bytes than evaluation_keys".into());
    }
    let file = TempFile::new(S::NAME, "keys");
    std::fs::write(&file.0, &whole).map_err(|err| format!("writing {}: {err}", file.0.display()))?;
    let from_file = S::server_from_file(&file.0);
    drop(file);
    let from_file = from_file.map_err(e("server_from_file"))?;
    let r = from_file
        .rotate(
            &from_file
                .deserialize_ciphertext(&s.client.serialize_ciphertext(&ct).map_err(e("serialise"))?)
                .map_err(e("deserialise"))?,
            1,
        )
        .map_err(e("rotate"))?;
    let want: Vec<f64> = (0..xs.len()).map(|i| xs[(i + 1) % xs.len()]).collect();
    let back = s
        .client
        .deserialize_ciphertext(&from_file.serialize_ciphertext(&r).map_err(e("serialise"))?)
        .map_err(e("deserialise"))?;
    p.check("server from a key file", &s.client.decrypt_values(&back).map_err(e("decrypt"))?, &want)?;
    // The saved client decrypts what the original encrypted.
    let secret = match s.client.save_secret() {
        Ok(b) => b,
        Err(BackendError::Unsupported { .. }) => {
            return Ok(Outcome::Passed(format!("{}; saving the client: unsupported (skipped)", p.summary(2))))
        }
        Err(err) => return Err(format!("save_secret: {err}")),
    };
    let loaded = S::load_client(&secret).map_err(e("load_client"))?;
    let ct2 = loaded
        .deserialize_ciphertext(&s.client.serialize_ciphertext(&ct).map_err(e("serialise"))?)
        .map_err(e("deserialise"))?;
    p.check("saved and loaded client", &loaded.decrypt_values(&ct2).map_err(e("decrypt"))?, &xs)?;
    Ok(Outcome::Passed(p.summary(3)))
}

fn foreign_keys<S: Scheme>(s: &Setup<S>, need: f64) -> Result<Outcome, String> {
    let other = S::keygen(&s.params, &s.request).map_err(e("second keygen"))?;
    let x = values(37, 41);
    let xs = padded(&x, s.caps.slots);
    let bytes = other.serialize_ciphertext(&other.encrypt_values(&x).map_err(e("encrypt"))?).map_err(e("serialise"))?;
    // Refusing the foreign ciphertext at any point passes; decrypting it correctly does not.
    let Ok(ct) = s.server.deserialize_ciphertext(&bytes) else {
        return Ok(Outcome::Passed("refused by the server".into()));
    };
    let Ok(sum) = s.server.add(&ct, &ct) else { return Ok(Outcome::Passed("refused by the server's add".into())) };
    let Ok(got) = s.decrypt(&sum) else { return Ok(Outcome::Passed("refused by the client".into())) };
    let doubled: Vec<f64> = xs.iter().map(|v| 2.0 * v).collect();
    let b = bits(&got, &doubled);
    if b >= need.min(8.0) {
        return Err(format!("a ciphertext of another key generation decrypted correctly ({b:.1} bits): two key generations gave the same key"));
    }
    Ok(Outcome::Passed(format!("decrypts to noise ({b:.1} bits)")))
}

fn corrupted<S: Scheme>(s: &Setup<S>, _: f64) -> Result<Outcome, String> {
    let ct = s.client.encrypt_values(&values(37, 51)).map_err(e("encrypt"))?;
    let ct = s.client.serialize_ciphertext(&ct).map_err(e("serialise"))?;
    let keys = s.client.evaluation_keys().map_err(e("evaluation keys"))?;
    let secret = s.client.save_secret().ok();
    // Every reader of bytes, with what it reads: each must refuse every corrupted variant.
    type Reader<'a> = (&'a str, &'a [u8], &'a dyn Fn(&[u8]) -> bool);
    let readers: [Reader; 4] = [
        ("the server read a ciphertext", &ct, &|b| s.server.deserialize_ciphertext(b).is_ok()),
        ("the client read a ciphertext", &ct, &|b| s.client.deserialize_ciphertext(b).is_ok()),
        ("a server was built from evaluation keys", &keys, &|b| S::server(b).is_ok()),
        ("a client was loaded from a secret", secret.as_deref().unwrap_or_default(), &|b| S::load_client(b).is_ok()),
    ];
    let mut n = 0;
    for (what, good, accepted) in readers.iter().filter(|r| !r.1.is_empty()) {
        for (how, bytes) in variants(good) {
            n += 1;
            if accepted(&bytes) {
                return Err(format!("{what} that was {how}"));
            }
        }
    }
    Ok(Outcome::Passed(format!("{n} corrupted inputs refused")))
}

/// Empty, truncated to half, and first byte flipped.
fn variants(b: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut flipped = b.to_vec();
    if let Some(f) = flipped.first_mut() {
        *f ^= 0xff;
    }
    vec![
        ("empty", Vec::new()),
        ("truncated to half", b[..b.len() / 2].to_vec()),
        ("mislabelled (first byte flipped)", flipped),
    ]
}

fn bootstrapping<S: Scheme>(s: &Setup<S>, need: f64) -> Result<Outcome, String> {
    if !s.caps.can_bootstrap {
        return Ok(Outcome::Skipped("these parameters cannot bootstrap".into()));
    }
    let (Some(level), Some(range)) = (s.caps.bootstrap_level, s.caps.bootstrap_range) else {
        return Err("can_bootstrap without bootstrap_level and bootstrap_range".into());
    };
    let client =
        S::keygen(&s.params, &KeyRequest { rotations: BTreeSet::new(), bootstrap: true, ..Default::default() })
            .map_err(e("keygen with bootstrapping"))?;
    let server = S::server(&client.evaluation_keys().map_err(e("evaluation keys"))?).map_err(e("server"))?;
    let x: Vec<f64> = values(37, 61).iter().map(|v| v * range).collect();
    let ct = server
        .deserialize_ciphertext(
            &client.serialize_ciphertext(&client.encrypt_values(&x).map_err(e("encrypt"))?).map_err(e("serialise"))?,
        )
        .map_err(e("deserialise"))?;
    let out = server.bootstrap(&server.drop_to_level(&ct, 0).map_err(e("drop"))?).map_err(e("bootstrap"))?;
    if server.level(&out) != level {
        return Err(format!("bootstrap returned level {}, the capabilities say {level}", server.level(&out)));
    }
    let got = client
        .decrypt_values(
            &client
                .deserialize_ciphertext(&server.serialize_ciphertext(&out).map_err(e("serialise"))?)
                .map_err(e("deserialise"))?,
        )
        .map_err(e("decrypt"))?;
    let want: Vec<f64> = padded(&x, s.caps.slots).iter().map(|v| v / range).collect();
    let got: Vec<f64> = got.iter().map(|v| v / range).collect();
    let mut p = Precision::new(need.min(8.0));
    p.check("bootstrap (relative to its range)", &got, &want)?;
    Ok(Outcome::Passed(p.summary(1)))
}
