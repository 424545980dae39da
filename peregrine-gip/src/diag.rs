//! Diagonal decomposition of a linear map between two layouts, scheduled baby-step giant-step.
//!
//! For output ciphertext `o` and input ciphertext `i`, the map restricted to that pair is a
//! slots×slots matrix M. With left rotation `rot(v, r)[t] = v[t + r]`,
//! `M·v = Σ_r d_r ⊙ rot(v, r)` where `d_r[t] = M[t, t + r]`: only the offsets r that occur
//! are kept. Each r is split as r = g + b (b a "baby" step in `[-n1/2, n1/2)`, g a multiple of
//! n1, the "giant" step), and `Σ_r d_r ⊙ rot(v, r) = Σ_g rot(Σ_b rot(d_r, -g) ⊙ rot(v, b), g)`:
//! baby rotations of each input are shared by all outputs (and can be hoisted), giant
//! rotations are applied once per output after accumulation. `n1` is chosen to minimise the
//! rotation work, a hoisted baby rotation counting [`BABY_WEIGHT`] of a giant one.
//!
//! Pairs whose map is the identity placement (offset 0, unit weights, every element of the
//! input ciphertext kept) are marked pass-through: the input ciphertext is added as it is,
//! with no multiplication.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::layout::{Layout, LayoutError};
use crate::linear::LinearMap;

/// Cost of one hoisted baby rotation relative to a giant rotation: hoisting shares the
/// decomposition of the input, so a baby rotation costs about half a full key switch (ckks at
/// N = 2^16, 40 towers: 8 hoisted rotations 735 ms, one rotation 181 ms).
pub const BABY_WEIGHT: f64 = 0.5;

/// One plaintext-diagonal product `diag ⊙ rot(inputs[input][in_ct], baby)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Term {
    /// Input tensor.
    pub input: usize,
    /// Ciphertext of that input.
    pub in_ct: usize,
    /// Baby rotation applied to the input ciphertext.
    pub baby: i64,
    /// The diagonal, already rotated by −giant.
    pub diag: SparseDiagonal,
}

/// Longest template a block of a [`SparseDiagonal`] repeats (interleaved layouts cycle
/// through their sub-channels' slots and weights with the packing factor as period).
const MAX_TEMPLATE: usize = 64;

/// A block repeats a template of `period` `(slot offset, value)` entries every `span` slots:
/// its entry j sits at `first + (j / period)·span + offsets[j mod period]` and holds
/// `values[j mod period]` (the template being entries `start..start + period` of its
/// [`SparseDiagonal`]'s `offsets` and `values`), for `j < count`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Block {
    first: u32,
    span: u32,
    count: u32,
    start: u32,
    period: u32,
}

/// A sparse diagonal held compactly. A convolution's diagonal holds each weight over a
/// channel's spatial positions, interleaved with the other sub-channels' slots and weights,
/// so it is stored as blocks, each repeating a short template of `(slot offset, value)`
/// entries at a fixed span (20 bytes a block plus 12 per template entry, whatever the block's
/// length); its first `period` slots, repeated `repeats` times at that period (diagonals of
/// maps writing a replicated layout repeat).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseDiagonal {
    /// Blocks in increasing slot order.
    blocks: Vec<Block>,
    /// The blocks' template slot offsets, one template after another.
    offsets: Vec<u32>,
    /// The blocks' template values, one template after another.
    values: Vec<f64>,
    /// Slots between repetitions.
    period: u32,
    /// Number of repetitions (1: the blocks are the whole diagonal).
    repeats: u32,
}

impl SparseDiagonal {
    /// From `(slot, coefficient)` pairs in any order (slots distinct, below `period`), repeated
    /// `repeats` times at `period`.
    pub fn from_entries(mut entries: Vec<(u32, f64)>, period: u32, repeats: u32) -> Self {
        entries.sort_unstable_by_key(|e| e.0);
        debug_assert!(entries.last().is_none_or(|e| e.0 < period || repeats == 1));
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits();
        let (mut blocks, mut offsets, mut values) = (Vec::new(), Vec::new(), Vec::new());
        let mut i = 0;
        while i < entries.len() {
            // The shortest template repeated at least four times, else the one that covers
            // the most entries.
            let mut best = (1, 1, 0);
            for p in 1..=MAX_TEMPLATE {
                if i + p >= entries.len() {
                    break;
                }
                let span = entries[i + p].0 - entries[i].0;
                let mut m = i + p;
                while m < entries.len()
                    && entries[m].0 - entries[m - p].0 == span
                    && same(entries[m].1, entries[m - p].1)
                {
                    m += 1;
                }
                if m - i > best.1 {
                    best = (p, m - i, span);
                }
                if m - i >= 4 * p {
                    break;
                }
            }
            let (p, count, span) = best;
            let p = p.min(count);
            blocks.push(Block {
                first: entries[i].0,
                span,
                count: count as u32,
                start: values.len() as u32,
                period: p as u32,
            });
            offsets.extend(entries[i..i + p].iter().map(|e| e.0 - entries[i].0));
            values.extend(entries[i..i + p].iter().map(|e| e.1));
            i += count;
        }
        blocks.shrink_to_fit();
        offsets.shrink_to_fit();
        values.shrink_to_fit();
        SparseDiagonal { blocks, offsets, values, period, repeats: repeats.max(1) }
    }

    /// Number of coefficients (repetitions included).
    pub fn len(&self) -> usize {
        self.blocks.iter().map(|b| b.count as usize).sum::<usize>() * self.repeats as usize
    }

    /// Bytes it holds (its blocks and templates).
    pub fn stored_bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>() + self.values.len() * 12
    }

    /// Σ coefficient² over all slots (repetitions included).
    pub fn norm_squared(&self) -> f64 {
        self.block_entries(0).map(|(_, v)| v * v).sum::<f64>() * self.repeats as f64
    }

    /// Whether it has no coefficient.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The `(slot, coefficient)` pairs of the first period, shifted by `offset` slots.
    fn block_entries(&self, offset: u32) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.blocks.iter().flat_map(move |b| {
            let template = b.start as usize..(b.start + b.period) as usize;
            let (offsets, values) = (&self.offsets[template.clone()], &self.values[template]);
            (0..b.count).map(move |j| {
                let k = (j % b.period) as usize;
                (offset + b.first + (j / b.period) * b.span + offsets[k], values[k])
            })
        })
    }

    /// `(slot, coefficient)` pairs in increasing slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        (0..self.repeats).flat_map(move |k| self.block_entries(k * self.period))
    }

    /// The diagonal as a dense vector of `slots` values.
    pub fn to_dense(&self, slots: usize) -> Vec<f64> {
        let mut v = vec![0.0; slots];
        // Template entry by template entry: no division per coefficient (this runs for every
        // product of every inference).
        for b in &self.blocks {
            let (period, span) = (b.period as usize, b.span as usize);
            let reps = (b.count as usize).div_ceil(period);
            for k in 0..period {
                let at = b.first as usize + self.offsets[b.start as usize + k] as usize;
                let w = self.values[b.start as usize + k];
                let n = reps - usize::from(k >= (b.count as usize) - (reps - 1) * period);
                for r in 0..n {
                    v[at + r * span] = w;
                }
            }
        }
        let period = self.period as usize;
        for r in 1..self.repeats as usize {
            v.copy_within(0..period, r * period);
        }
        v
    }
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
        // Replicated layouts: an input repeating every P_in slots is read at offsets modulo
        // P_in (rotations by r and r ± P_in agree on it), which merges diagonals; an output
        // repeating every P_out slots gets every copy from the same products. The diagonals
        // then repeat every Q = the largest of the periods: the entries of slots below Q are
        // computed and stored once.
        let (ins, outs) = Self::periods(inputs, output)?;
        let q_period = ins.iter().copied().chain([outs]).max().unwrap_or(slots);
        // Sort every coefficient by (out_ct, input, in_ct, r) packed in one key, then group.
        let mut items: Vec<(u64, u32, f64)> = Vec::with_capacity(map.entries.len() * (q_period / outs));
        for e in &map.entries {
            let (ict, islot) = inputs[e.input as usize].positions[e.src as usize];
            let (oct, oslot) = output.positions[e.dst as usize];
            let p_in = ins[e.input as usize] as i64;
            for copy in 0..q_period / outs {
                let oslot = oslot + (copy * outs) as u32;
                let mut r = (islot as i64 - oslot as i64).rem_euclid(p_in);
                if r > p_in / 2 {
                    r -= p_in;
                }
                let r = norm(r, slots) as u64;
                items.push(((oct as u64) << 48 | (e.input as u64) << 40 | (ict as u64) << 24 | r, oslot, e.w));
            }
        }
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
                && inputs[inp].replicas == output.replicas
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
        // Choose n1 minimising the weighted baby + giant rotations.
        let mut best = (f64::INFINITY, 1usize);
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
            let count = |sets: &mut dyn Iterator<Item = &BTreeSet<i64>>| {
                sets.map(|s| s.iter().filter(|r| **r != 0).count()).sum::<usize>() as f64
            };
            let cost = BABY_WEIGHT * count(&mut babies.values()) + count(&mut giants.values());
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
                let diag = SparseDiagonal::from_entries(
                    entries.into_iter().map(|(s, w)| (((s as i64 + g) % q_period as i64) as u32, w)).collect(),
                    q_period as u32,
                    (slots / q_period) as u32,
                );
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
                    for copy in 0..output.replicas {
                        outputs[ct as usize].bias.push((slot + (copy * outs) as u32, *v));
                    }
                }
            }
        }
        Ok(DiagonalPlan { slots, baby_step: n1, babies, outputs })
    }

    /// Bytes its diagonals take in their compact form.
    pub fn diagonal_bytes(&self) -> usize {
        self.outputs
            .iter()
            .flat_map(|o| o.giants.iter().flat_map(|g| g.terms.iter()))
            .map(|t| t.diag.stored_bytes())
            .sum()
    }

    /// The period of each input layout and of the output layout (checked: powers of two
    /// dividing the slot count, every position below its period).
    fn periods(inputs: &[&Layout], output: &Layout) -> Result<(Vec<usize>, usize), LayoutError> {
        let period = |l: &Layout| -> Result<usize, LayoutError> {
            let p = l.period();
            if l.replicas > 1 && (!l.replicas.is_power_of_two() || l.slots % l.replicas != 0) {
                return Err(LayoutError::TooWide { block: p, slots: l.slots });
            }
            if let Some((i, &(ct, slot))) = l.positions.iter().enumerate().find(|(_, p2)| p2.1 as usize >= p) {
                return Err(LayoutError::OutOfRange { element: i, ct, slot, cts: l.ciphertexts, slots: p });
            }
            Ok(p)
        };
        Ok((inputs.iter().map(|l| period(l)).collect::<Result<_, _>>()?, period(output)?))
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
                        for (slot, w) in t.diag.iter() {
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

#[cfg(test)]
mod tests {
    use super::SparseDiagonal;

    #[test]
    fn sparse_diagonal_keeps_every_coefficient_in_slot_order() {
        // Runs of several lengths, given out of order, with a lone slot and a run at the end.
        let slots = 37u32;
        let picked: Vec<u32> = (0..slots).filter(|s| s % 7 != 3 && *s != 20).collect();
        let mut entries: Vec<(u32, f64)> = picked.iter().map(|&s| (s, s as f64 * 0.5 - 3.25)).collect();
        entries.reverse();
        entries.swap(2, 9);
        let d = SparseDiagonal::from_entries(entries, slots, 1);
        assert_eq!(d.len(), picked.len());
        let listed: Vec<(u32, f64)> = d.iter().collect();
        let want: Vec<(u32, f64)> = picked.iter().map(|&s| (s, s as f64 * 0.5 - 3.25)).collect();
        assert_eq!(listed, want);
        let dense = d.to_dense(slots as usize);
        for s in 0..slots {
            let expect = if picked.contains(&s) { s as f64 * 0.5 - 3.25 } else { 0.0 };
            assert_eq!(dense[s as usize], expect, "slot {s}");
        }
        assert!(SparseDiagonal::from_entries(Vec::new(), 8, 4).is_empty());
        // Repeated: three coefficients below 8, four copies at period 8.
        let r = SparseDiagonal::from_entries(vec![(5, 2.0), (0, 1.0), (1, -1.0)], 8, 4);
        assert_eq!(r.len(), 12);
        let dense = r.to_dense(32);
        for copy in 0..4 {
            assert_eq!(&dense[copy * 8..copy * 8 + 8], &[1.0, -1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
        }
        let listed: Vec<(u32, f64)> = r.iter().collect();
        assert_eq!(listed.len(), 12);
        assert_eq!(listed[3], (8, 1.0));
        assert_eq!(listed[11], (29, 2.0));
    }

    /// Diagonals of interleaved layouts (values cycling with a period, evenly spaced slots,
    /// gaps, patterns that change midway) are stored as a few blocks and read back exactly.
    #[test]
    fn sparse_diagonal_stores_periodic_values_as_blocks() {
        // Period 3 over 0..30, then constant 2.0 at stride 4 from 31, then a lone slot.
        let mut e: Vec<(u32, f64)> = (0..30).map(|s| (s, [0.5, -1.0, 0.25][s as usize % 3])).collect();
        e.extend((0..9).map(|j| (31 + 4 * j, 2.0)));
        e.push((70, -7.0));
        let d = SparseDiagonal::from_entries(e.iter().rev().copied().collect(), 128, 2);
        assert_eq!(d.len(), 2 * e.len());
        assert_eq!(d.iter().take(e.len()).collect::<Vec<_>>(), e);
        assert_eq!(d.iter().skip(e.len()).map(|(s, v)| (s - 128, v)).collect::<Vec<_>>(), e);
        assert_eq!(d.stored_bytes(), 3 * 20 + (3 + 1 + 1) * 12, "three blocks, five template entries");
        let dense = d.to_dense(256);
        for &(s, v) in &e {
            assert_eq!((dense[s as usize], dense[s as usize + 128]), (v, v));
        }
        assert_eq!(dense.iter().filter(|v| **v != 0.0).count(), 2 * e.len());
        let want: f64 = e.iter().map(|x| x.1 * x.1).sum::<f64>() * 2.0;
        assert!((d.norm_squared() - want).abs() < 1e-12);
        // Random values: every entry kept, no pattern invented.
        let mut x = 12345u64;
        let r: Vec<(u32, f64)> = (0..500u32)
            .filter(|s| s % 7 != 3)
            .map(|s| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s, ((x >> 40) % 5) as f64 - 2.0)
            })
            .collect();
        let d = SparseDiagonal::from_entries(r.clone(), 512, 1);
        assert_eq!(d.iter().collect::<Vec<_>>(), r);
        let mut want = vec![0.0; 512];
        r.iter().for_each(|&(s, v)| want[s as usize] = v);
        assert_eq!(d.to_dense(512), want, "blocks whose last repetition is partial");
        // Slots 0, 1, 4, 5, 8, 9, … with two alternating values: one block of a two-entry
        // template, then a changed value starts another.
        let mut e: Vec<(u32, f64)> = (0..40).map(|j| (4 * (j / 2) + j % 2, [1.0, -3.0][j as usize % 2])).collect();
        e.extend((0..12).map(|j| (80 + 4 * (j / 2) + j % 2, [1.0, 5.0][j as usize % 2])));
        let d = SparseDiagonal::from_entries(e.clone(), 128, 1);
        assert_eq!(d.iter().collect::<Vec<_>>(), e);
        assert_eq!(d.stored_bytes(), 2 * 20 + 4 * 12);
        let mut want = vec![0.0; 128];
        e.iter().for_each(|&(s, v)| want[s as usize] = v);
        assert_eq!(d.to_dense(128), want);
    }
}
