//! Diagonal decomposition of a linear map between two layouts, scheduled baby-step giant-step.
//!
//! For output ciphertext `o` and input ciphertext `i`, the map restricted to that pair is a
//! slots×slots matrix M. With left rotation `rot(v, r)[t] = v[t + r]`,
//! `M·v = Σ_r d_r ⊙ rot(v, r)` where `d_r[t] = M[t, t + r]`: only the offsets r that occur
//! are kept. Each r is split as r = g + b (b a "baby" step in `[-n1/2, n1/2)`, g a multiple of
//! n1, the "giant" step), and `Σ_r d_r ⊙ rot(v, r) = Σ_g rot(Σ_b rot(d_r, -g) ⊙ rot(v, b), g)`:
//! baby rotations of each input are shared by all outputs (and can be hoisted), giant
//! rotations are applied once per output after accumulation. `n1` is chosen to minimise the
//! number of rotations.
//!
//! Pairs whose map is the identity placement (offset 0, unit weights, every element of the
//! input ciphertext kept) are marked pass-through: the input ciphertext is added as it is,
//! with no multiplication.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::layout::{Layout, LayoutError};
use crate::linear::LinearMap;

/// One plaintext-diagonal product `diag ⊙ rot(inputs[input][in_ct], baby)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Term {
    /// Input tensor.
    pub input: usize,
    /// Ciphertext of that input.
    pub in_ct: usize,
    /// Baby rotation applied to the input ciphertext.
    pub baby: i64,
    /// The diagonal, already rotated by −giant: sparse `(slot, coefficient)`.
    pub diag: Vec<(u32, f64)>,
}

/// Terms summed and then rotated by one giant step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Giant {
    /// Giant rotation (normalised into `0..slots`).
    pub step: i64,
    /// Products accumulated before the rotation.
    pub terms: Vec<Term>,
}

/// How one output ciphertext is computed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairPlan {
    /// Rotated-and-summed products (consume one level).
    pub giants: Vec<Giant>,
    /// Input ciphertexts added as they are: `(input, in_ct)`.
    pub passthrough: Vec<(usize, usize)>,
    /// Bias as sparse `(slot, value)`.
    pub bias: Vec<(u32, f64)>,
}

/// The full schedule of a linear map from input layouts to an output layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagonalPlan {
    /// Slots per ciphertext.
    pub slots: usize,
    /// Baby-step range n1.
    pub baby_step: usize,
    /// Baby rotations needed per `(input, in_ct)` (normalised, without 0).
    pub babies: BTreeMap<(usize, usize), BTreeSet<i64>>,
    /// One plan per output ciphertext.
    pub outputs: Vec<PairPlan>,
}

fn norm(r: i64, slots: usize) -> i64 {
    r.rem_euclid(slots as i64)
}

fn split(r: i64, n1: usize, slots: usize) -> (i64, i64) {
    let n1 = n1 as i64;
    let b = (r + n1 / 2).rem_euclid(n1) - n1 / 2;
    (norm(b, slots), norm(r - b, slots))
}

/// `(output ciphertext, input, input ciphertext)` of a pair of ciphertexts a map connects.
type PairKey = (usize, usize, usize);
/// The diagonals of one pair: per rotation, the `(output slot, coefficient)` entries.
type Diagonals = BTreeMap<i64, Vec<(u32, f64)>>;

impl DiagonalPlan {
    /// Schedules `map` from `inputs` layouts to `output` layout.
    pub fn new(map: &LinearMap, inputs: &[&Layout], output: &Layout) -> Result<DiagonalPlan, LayoutError> {
        Self::with_passthrough(map, inputs, output, true)
    }

    /// As [`DiagonalPlan::new`]; with `allow_passthrough` false every pair is multiplied (so
    /// every term comes out at the same, chosen scale).
    pub fn with_passthrough(
        map: &LinearMap,
        inputs: &[&Layout],
        output: &Layout,
        allow_passthrough: bool,
    ) -> Result<DiagonalPlan, LayoutError> {
        if inputs.len() != map.input_lens.len() {
            return Err(LayoutError::InputCount { map: map.input_lens.len(), layouts: inputs.len() });
        }
        for (k, (l, n)) in inputs.iter().zip(&map.input_lens).enumerate() {
            if l.len() != *n {
                return Err(LayoutError::InputLen { input: k, layout: l.len(), map: *n });
            }
            if l.slots != output.slots {
                return Err(LayoutError::SlotMismatch);
            }
        }
        if output.len() != map.out_len {
            return Err(LayoutError::OutputLen { layout: output.len(), map: map.out_len });
        }
        let slots = output.slots;
        if slots >= 1 << 24
            || output.ciphertexts >= 1 << 16
            || inputs.len() >= 1 << 8
            || inputs.iter().any(|l| l.ciphertexts >= 1 << 16)
        {
            return Err(LayoutError::TooLarge);
        }
        // Sort every coefficient by (out_ct, input, in_ct, r) packed in one key, then group.
        let mut items: Vec<(u64, u32, f64)> = map
            .entries
            .iter()
            .map(|e| {
                let (ict, islot) = inputs[e.input as usize].positions[e.src as usize];
                let (oct, oslot) = output.positions[e.dst as usize];
                let r = norm(islot as i64 - oslot as i64, slots) as u64;
                ((oct as u64) << 48 | (e.input as u64) << 40 | (ict as u64) << 24 | r, oslot, e.w)
            })
            .collect();
        items.sort_unstable_by_key(|t| t.0);
        let mut pairs: Vec<(PairKey, Diagonals)> = Vec::new();
        let mut k = 0;
        while k < items.len() {
            let key = items[k].0;
            let pair = ((key >> 48) as usize, ((key >> 40) & 0xff) as usize, ((key >> 24) & 0xffff) as usize);
            let r = (key & 0xff_ffff) as i64;
            let mut j = k;
            let mut list = Vec::new();
            while j < items.len() && items[j].0 == key {
                list.push((items[j].1, items[j].2));
                j += 1;
            }
            match pairs.last_mut() {
                Some((p, m)) if *p == pair => {
                    m.insert(r, list);
                }
                _ => pairs.push((pair, BTreeMap::from([(r, list)]))),
            }
            k = j;
        }
        // Elements per input ciphertext, for the pass-through test.
        let per_ct: Vec<Vec<usize>> = inputs
            .iter()
            .map(|l| {
                let mut c = vec![0usize; l.ciphertexts];
                for &(ct, _) in &l.positions {
                    c[ct as usize] += 1;
                }
                c
            })
            .collect();
        let mut outputs = vec![PairPlan::default(); output.ciphertexts];
        let mut rotating: Vec<(PairKey, Diagonals)> = Vec::new();
        for (key, diags) in pairs {
            let (oct, inp, ict) = key;
            let pass = allow_passthrough
                && !inputs[inp].dirty
                && diags.len() == 1
                && diags.contains_key(&0)
                && diags[&0].len() == per_ct[inp][ict]
                && diags[&0].iter().all(|(_, w)| *w == 1.0);
            if pass {
                outputs[oct].passthrough.push((inp, ict));
            } else {
                rotating.push((key, diags));
            }
        }
        // Choose n1 minimising baby + giant rotations.
        let mut best = (usize::MAX, 1usize);
        let mut n1 = 1usize;
        while n1 <= slots {
            let mut babies: HashMap<(usize, usize), BTreeSet<i64>> = HashMap::new();
            let mut giants: HashMap<usize, BTreeSet<i64>> = HashMap::new();
            for ((oct, inp, ict), diags) in &rotating {
                for r in diags.keys() {
                    let (b, g) = split(*r, n1, slots);
                    babies.entry((*inp, *ict)).or_default().insert(b);
                    giants.entry(*oct).or_default().insert(g);
                }
            }
            let cost =
                babies.values().chain(giants.values()).map(|s| s.iter().filter(|r| **r != 0).count()).sum::<usize>();
            if cost < best.0 {
                best = (cost, n1);
            }
            n1 *= 2;
        }
        let n1 = best.1;
        let mut babies: BTreeMap<(usize, usize), BTreeSet<i64>> = BTreeMap::new();
        let mut grouped: BTreeMap<(usize, i64), Vec<Term>> = BTreeMap::new();
        for ((oct, inp, ict), diags) in rotating {
            for (r, entries) in diags {
                let (b, g) = split(r, n1, slots);
                if b != 0 {
                    babies.entry((inp, ict)).or_default().insert(b);
                }
                let diag = entries.into_iter().map(|(s, w)| (((s as i64 + g) % slots as i64) as u32, w)).collect();
                grouped.entry((oct, g)).or_default().push(Term { input: inp, in_ct: ict, baby: b, diag });
            }
        }
        for ((oct, g), terms) in grouped {
            outputs[oct].giants.push(Giant { step: g, terms });
        }
        if let Some(bias) = &map.bias {
            for (i, v) in bias.iter().enumerate() {
                if *v != 0.0 {
                    let (ct, slot) = output.positions[i];
                    outputs[ct as usize].bias.push((slot, *v));
                }
            }
        }
        Ok(DiagonalPlan { slots, baby_step: n1, babies, outputs })
    }

    /// Whether evaluation multiplies by plaintexts (and so consumes a level).
    pub fn consumes_level(&self) -> bool {
        self.outputs.iter().any(|o| !o.giants.is_empty())
    }

    /// Every rotation step used (normalised, without 0).
    pub fn rotation_steps(&self) -> BTreeSet<i64> {
        let mut s: BTreeSet<i64> = self.babies.values().flatten().copied().collect();
        s.extend(self.outputs.iter().flat_map(|o| o.giants.iter().map(|g| g.step)).filter(|g| *g != 0));
        s
    }

    /// Number of rotations one evaluation performs.
    pub fn rotation_count(&self) -> usize {
        self.babies.values().map(|b| b.len()).sum::<usize>()
            + self.outputs.iter().map(|o| o.giants.iter().filter(|g| g.step != 0).count()).sum::<usize>()
    }

    /// Number of ciphertext × plaintext products one evaluation performs.
    pub fn plaintext_mults(&self) -> usize {
        self.outputs.iter().map(|o| o.giants.iter().map(|g| g.terms.len()).sum::<usize>()).sum()
    }

    /// Evaluates the schedule on cleartext slot vectors (the reference for the encrypted version).
    pub fn apply_clear(&self, inputs: &[Vec<Vec<f64>>]) -> Vec<Vec<f64>> {
        let s = self.slots;
        let rot = |v: &[f64], r: i64| -> Vec<f64> {
            let r = norm(r, s) as usize;
            (0..s).map(|t| v[(t + r) % s]).collect()
        };
        let mut rotated: HashMap<(usize, usize, i64), Vec<f64>> = HashMap::new();
        self.outputs
            .iter()
            .map(|o| {
                let mut out = vec![0.0; s];
                for g in &o.giants {
                    let mut acc = vec![0.0; s];
                    for t in &g.terms {
                        let v = rotated
                            .entry((t.input, t.in_ct, t.baby))
                            .or_insert_with(|| rot(&inputs[t.input][t.in_ct], t.baby));
                        for &(slot, w) in &t.diag {
                            acc[slot as usize] += w * v[slot as usize];
                        }
                    }
                    for (x, y) in out.iter_mut().zip(rot(&acc, g.step)) {
                        *x += y;
                    }
                }
                for &(inp, ict) in &o.passthrough {
                    for (x, y) in out.iter_mut().zip(&inputs[inp][ict]) {
                        *x += y;
                    }
                }
                for &(slot, v) in &o.bias {
                    out[slot as usize] += v;
                }
                out
            })
            .collect()
    }
}
