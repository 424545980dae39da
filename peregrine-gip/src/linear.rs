//! Sparse linear maps between flat tensors, the operators that build them, and composition.
//!
//! Every linear layer of a CNN (convolution, transposed convolution, pooling, batch norm,
//! fully connected, upsampling, the option-A shortcut, concatenation, addition, flatten) is a
//! [`LinearMap`] from its input tensors (flat C-H-W order) to its output plus a bias. Chains of
//! linear layers compose into one map, so they cost one multiplicative level in all.

use serde::{Deserialize, Serialize};

/// One non-zero coefficient: `out[dst] += w · inputs[input][src]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Which input tensor.
    pub input: u32,
    /// Flat index in that input.
    pub src: u32,
    /// Flat index in the output.
    pub dst: u32,
    /// Coefficient.
    pub w: f64,
}

/// A sparse affine map `out = Σ_inputs M_i · in_i + bias`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearMap {
    /// Length of each input tensor.
    pub input_lens: Vec<usize>,
    /// Length of the output.
    pub out_len: usize,
    /// Non-zero coefficients.
    pub entries: Vec<Entry>,
    /// Optional bias (length `out_len`).
    pub bias: Option<Vec<f64>>,
}

/// Geometry of a 2-D convolution or pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel (kh, kw).
    pub kernel: [usize; 2],
    /// Stride (sh, sw).
    pub stride: [usize; 2],
    /// Padding (ph, pw) before the first row and column.
    pub padding: [usize; 2],
    /// Padding (ph, pw) after the last row and column (equal to `padding` unless asymmetric).
    pub padding_end: [usize; 2],
    /// Dilation (dh, dw).
    pub dilation: [usize; 2],
}

fn out_size(i: usize, k: usize, s: usize, p: [usize; 2], d: usize) -> usize {
    (i + p[0] + p[1] - d * (k - 1) - 1) / s + 1
}

impl Window {
    /// A window with the same padding on both sides.
    pub fn symmetric(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], dilation: [usize; 2]) -> Self {
        Window { kernel, stride, padding, padding_end: padding, dilation }
    }
}

impl LinearMap {
    /// Applies the map to cleartext inputs (reference semantics, used by tests and checks).
    pub fn apply(&self, inputs: &[&[f64]]) -> Vec<f64> {
        let mut out = self.bias.clone().unwrap_or_else(|| vec![0.0; self.out_len]);
        for e in &self.entries {
            out[e.dst as usize] += e.w * inputs[e.input as usize][e.src as usize];
        }
        out
    }

    /// The identity on a tensor of `len` elements (e.g. flatten).
    pub fn identity(len: usize) -> Self {
        LinearMap {
            input_lens: vec![len],
            out_len: len,
            entries: (0..len as u32).map(|i| Entry { input: 0, src: i, dst: i, w: 1.0 }).collect(),
            bias: None,
        }
    }

    /// Whether this is exactly the identity (unit weights, no bias, each element to itself).
    pub fn is_identity(&self) -> bool {
        self.input_lens.len() == 1
            && self.input_lens[0] == self.out_len
            && self.bias.is_none()
            && self.entries.len() == self.out_len
            && self.entries.iter().all(|e| e.src == e.dst && e.w == 1.0)
    }

    /// 2-D convolution of a `cin×h×w` map; `weight` is `(cout, cin/groups, kh, kw)` row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        win: Window,
        groups: usize,
        weight: &[f64],
        bias: Option<&[f64]>,
    ) -> Self {
        let [kh, kw] = win.kernel;
        let ho = out_size(h, kh, win.stride[0], [win.padding[0], win.padding_end[0]], win.dilation[0]);
        let wo = out_size(w, kw, win.stride[1], [win.padding[1], win.padding_end[1]], win.dilation[1]);
        let (cg, og) = (cin / groups, cout / groups);
        let mut entries = Vec::new();
        for o in 0..cout {
            let g = o / og;
            for oy in 0..ho {
                for ox in 0..wo {
                    let dst = ((o * ho + oy) * wo + ox) as u32;
                    for ci in 0..cg {
                        let c = g * cg + ci;
                        for i in 0..kh {
                            let iy = (oy * win.stride[0] + i * win.dilation[0]) as isize - win.padding[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for j in 0..kw {
                                let ix = (ox * win.stride[1] + j * win.dilation[1]) as isize - win.padding[1] as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let wv = weight[((o * cg + ci) * kh + i) * kw + j];
                                if wv != 0.0 {
                                    let src = ((c * h + iy as usize) * w + ix as usize) as u32;
                                    entries.push(Entry { input: 0, src, dst, w: wv });
                                }
                            }
                        }
                    }
                }
            }
        }
        let bias = bias.map(|b| (0..cout * ho * wo).map(|k| b[k / (ho * wo)]).collect());
        LinearMap { input_lens: vec![cin * h * w], out_len: cout * ho * wo, entries, bias }
    }

    /// Transposed convolution to a `cout×ho×wo` map; `weight` is `(cin, cout/groups, kh, kw)`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose2d(
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        ho: usize,
        wo: usize,
        win: Window,
        groups: usize,
        weight: &[f64],
        bias: Option<&[f64]>,
    ) -> Self {
        let [kh, kw] = win.kernel;
        let (cg, og) = (cin / groups, cout / groups);
        let mut entries = Vec::new();
        for c in 0..cin {
            let g = c / cg;
            for iy in 0..h {
                for ix in 0..w {
                    let src = ((c * h + iy) * w + ix) as u32;
                    for o in 0..og {
                        for i in 0..kh {
                            let oy = (iy * win.stride[0] + i * win.dilation[0]) as isize - win.padding[0] as isize;
                            if oy < 0 || oy >= ho as isize {
                                continue;
                            }
                            for j in 0..kw {
                                let ox = (ix * win.stride[1] + j * win.dilation[1]) as isize - win.padding[1] as isize;
                                if ox < 0 || ox >= wo as isize {
                                    continue;
                                }
                                let wv = weight[((c * og + o) * kh + i) * kw + j];
                                if wv != 0.0 {
                                    let dst = (((g * og + o) * ho + oy as usize) * wo + ox as usize) as u32;
                                    entries.push(Entry { input: 0, src, dst, w: wv });
                                }
                            }
                        }
                    }
                }
            }
        }
        let bias = bias.map(|b| (0..cout * ho * wo).map(|k| b[k / (ho * wo)]).collect());
        let mut m = LinearMap { input_lens: vec![cin * h * w], out_len: cout * ho * wo, entries, bias };
        m.merge_duplicates();
        m
    }

    /// Average pooling (zero padding counted in the divisor).
    pub fn avg_pool(c: usize, h: usize, w: usize, win: Window) -> Self {
        let ones = vec![1.0 / (win.kernel[0] * win.kernel[1]) as f64; win.kernel[0] * win.kernel[1]];
        // A depthwise convolution with constant weights.
        let weight: Vec<f64> = (0..c).flat_map(|_| ones.iter().copied()).collect();
        LinearMap::conv2d(c, h, w, c, win, c, &weight, None)
    }

    /// Global average pooling `c×h×w → c`.
    pub fn global_avg_pool(c: usize, h: usize, w: usize) -> Self {
        let inv = 1.0 / (h * w) as f64;
        let entries =
            (0..c * h * w).map(|i| Entry { input: 0, src: i as u32, dst: (i / (h * w)) as u32, w: inv }).collect();
        LinearMap { input_lens: vec![c * h * w], out_len: c, entries, bias: None }
    }

    /// Per-channel affine map `y = scale[c]·x + shift[c]` on a `c×hw` tensor (batch norm).
    pub fn affine(c: usize, hw: usize, scale: &[f64], shift: &[f64]) -> Self {
        let entries = (0..c * hw).map(|i| Entry { input: 0, src: i as u32, dst: i as u32, w: scale[i / hw] }).collect();
        LinearMap {
            input_lens: vec![c * hw],
            out_len: c * hw,
            entries,
            bias: Some((0..c * hw).map(|i| shift[i / hw]).collect()),
        }
    }

    /// Fully connected layer, `weight` is `(out, in)` row-major.
    pub fn fully_connected(inp: usize, out: usize, weight: &[f64], bias: Option<&[f64]>) -> Self {
        let mut entries = Vec::with_capacity(inp * out);
        for o in 0..out {
            for i in 0..inp {
                let wv = weight[o * inp + i];
                if wv != 0.0 {
                    entries.push(Entry { input: 0, src: i as u32, dst: o as u32, w: wv });
                }
            }
        }
        LinearMap { input_lens: vec![inp], out_len: out, entries, bias: bias.map(|b| b.to_vec()) }
    }

    /// Nearest-neighbour upsampling by `f`.
    pub fn upsample(c: usize, h: usize, w: usize, f: usize) -> Self {
        let (ho, wo) = (h * f, w * f);
        let entries = (0..c * ho * wo)
            .map(|k| {
                let (ch, y, x) = (k / (ho * wo), (k / wo) % ho, k % wo);
                Entry { input: 0, src: ((ch * h + y / f) * w + x / f) as u32, dst: k as u32, w: 1.0 }
            })
            .collect();
        LinearMap { input_lens: vec![c * h * w], out_len: c * ho * wo, entries, bias: None }
    }

    /// One value per channel repeated over `hw` pixels: `[C, 1, 1]` → `[C, H, W]`.
    pub fn broadcast(c: usize, hw: usize) -> Self {
        let entries = (0..c * hw).map(|k| Entry { input: 0, src: (k / hw) as u32, dst: k as u32, w: 1.0 }).collect();
        LinearMap { input_lens: vec![c], out_len: c * hw, entries, bias: None }
    }

    /// Option-A shortcut: every `s`-th pixel, channels zero-padded `before`/`after`.
    pub fn subsample_pad(c: usize, h: usize, w: usize, s: usize, before: usize, after: usize) -> Self {
        let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
        let mut entries = Vec::with_capacity(c * ho * wo);
        for ch in 0..c {
            for y in 0..ho {
                for x in 0..wo {
                    entries.push(Entry {
                        input: 0,
                        src: ((ch * h + y * s) * w + x * s) as u32,
                        dst: (((ch + before) * ho + y) * wo + x) as u32,
                        w: 1.0,
                    });
                }
            }
        }
        LinearMap { input_lens: vec![c * h * w], out_len: (c + before + after) * ho * wo, entries, bias: None }
    }

    /// Channel concatenation of inputs of the given lengths (same H×W).
    pub fn concat(lens: &[usize]) -> Self {
        let mut entries = Vec::new();
        let mut off = 0u32;
        for (k, &n) in lens.iter().enumerate() {
            entries.extend((0..n as u32).map(|i| Entry { input: k as u32, src: i, dst: off + i, w: 1.0 }));
            off += n as u32;
        }
        LinearMap { input_lens: lens.to_vec(), out_len: off as usize, entries, bias: None }
    }

    /// Element-wise sum of `n` inputs of length `len`.
    pub fn sum(n: usize, len: usize) -> Self {
        let entries = (0..n as u32)
            .flat_map(|k| (0..len as u32).map(move |i| Entry { input: k, src: i, dst: i, w: 1.0 }))
            .collect();
        LinearMap { input_lens: vec![len; n], out_len: len, entries, bias: None }
    }

    /// Sums coefficients that share (input, src, dst) and drops zeros.
    pub fn merge_duplicates(&mut self) {
        self.entries.sort_unstable_by_key(|e| (e.input, e.dst, e.src));
        let mut out: Vec<Entry> = Vec::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            match out.last_mut() {
                Some(l) if l.input == e.input && l.src == e.src && l.dst == e.dst => l.w += e.w,
                _ => out.push(e),
            }
        }
        out.retain(|e| e.w != 0.0);
        self.entries = out;
    }

    /// `self ∘ before`: feeds `before`'s output into this map's single input.
    pub fn after(&self, before: &LinearMap) -> LinearMap {
        assert_eq!(self.input_lens.len(), 1, "composition needs a single-input outer map");
        self.substitute(&[Some(before)])
    }

    /// An upper bound on the coefficients of `self.substitute(inner)` (exact when no two
    /// products land on the same coefficient), counted without building it: each outer
    /// coefficient reading a substituted input becomes as many coefficients as the inner map
    /// has for that element.
    pub fn substitute_bound(&self, inner: &[Option<&LinearMap>]) -> usize {
        assert_eq!(inner.len(), self.input_lens.len(), "one substitution slot per input");
        let per_dst: Vec<Option<Vec<u32>>> = inner
            .iter()
            .map(|m| {
                m.filter(|m| !m.is_identity()).map(|m| {
                    let mut n = vec![0u32; m.out_len];
                    for e in &m.entries {
                        n[e.dst as usize] += 1;
                    }
                    n
                })
            })
            .collect();
        self.entries
            .iter()
            .map(|a| match &per_dst[a.input as usize] {
                Some(n) => n[a.src as usize] as usize,
                None => 1,
            })
            .sum()
    }

    /// Replaces input `i` by the output of `inner[i]` where given. The result's inputs are, in
    /// order, for each input of `self` either the inputs of `inner[i]` or that input itself.
    pub fn substitute(&self, inner: &[Option<&LinearMap>]) -> LinearMap {
        assert_eq!(inner.len(), self.input_lens.len(), "one substitution slot per input");
        // Substituting an identity changes nothing: skip the work.
        let inner: Vec<Option<&LinearMap>> = inner.iter().map(|m| m.filter(|m| !m.is_identity())).collect();
        let mut base = Vec::with_capacity(inner.len());
        let mut input_lens = Vec::new();
        for (i, m) in inner.iter().enumerate() {
            base.push(input_lens.len() as u32);
            match m {
                Some(m) => {
                    assert_eq!(m.out_len, self.input_lens[i], "substituted map {i} has the wrong output size");
                    input_lens.extend_from_slice(&m.input_lens);
                }
                None => input_lens.push(self.input_lens[i]),
            }
        }
        // Index the outer map by (input, src) once, then stream every inner entry through it.
        let mut outer_by_src: Vec<Vec<Vec<(u32, f64)>>> = self
            .input_lens
            .iter()
            .zip(&inner)
            .map(|(&n, m)| if m.is_some() { vec![Vec::new(); n] } else { Vec::new() })
            .collect();
        let cap = self.entries.len() + inner.iter().flatten().map(|m| m.entries.len()).sum::<usize>();
        let mut entries = Vec::with_capacity(cap);
        // When every substituted input maps its elements one-to-one onto distinct outputs, the
        // composition cannot create duplicate coefficients and needs no merge.
        let mut injective = true;
        let mut dst_seen: Vec<Vec<bool>> =
            inner.iter().map(|m| if m.is_some() { vec![false; self.out_len] } else { Vec::new() }).collect();
        for a in &self.entries {
            let i = a.input as usize;
            if inner[i].is_some() {
                let list = &mut outer_by_src[i][a.src as usize];
                list.push((a.dst, a.w));
                if list.len() > 1 || std::mem::replace(&mut dst_seen[i][a.dst as usize], true) {
                    injective = false;
                }
            } else {
                entries.push(Entry { input: base[i], ..*a });
            }
        }
        let mut bias = self.bias.clone();
        for (i, m) in inner.iter().enumerate() {
            let Some(m) = m else { continue };
            let idx = &outer_by_src[i];
            for b in &m.entries {
                for &(dst, w) in &idx[b.dst as usize] {
                    entries.push(Entry { input: base[i] + b.input, src: b.src, dst, w: w * b.w });
                }
            }
            if let Some(bb) = &m.bias {
                let v = bias.get_or_insert_with(|| vec![0.0; self.out_len]);
                for (j, outs) in idx.iter().enumerate() {
                    for &(dst, w) in outs {
                        v[dst as usize] += w * bb[j];
                    }
                }
            }
        }
        let mut m = LinearMap { input_lens, out_len: self.out_len, entries, bias };
        if !injective {
            m.merge_duplicates();
        }
        m
    }

    /// Merges inputs that are the same tensor: `ids[i]` names input i; returns the map over
    /// the distinct ids (in first-seen order) and those ids.
    pub fn merge_inputs<T: PartialEq + Clone>(&self, ids: &[T]) -> (LinearMap, Vec<T>) {
        assert_eq!(ids.len(), self.input_lens.len());
        let mut uniq: Vec<T> = Vec::new();
        let mut lens = Vec::new();
        let mut remap = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            match uniq.iter().position(|u| u == id) {
                Some(k) => remap.push(k as u32),
                None => {
                    remap.push(uniq.len() as u32);
                    uniq.push(id.clone());
                    lens.push(self.input_lens[i]);
                }
            }
        }
        let entries = self.entries.iter().map(|e| Entry { input: remap[e.input as usize], ..*e }).collect();
        let mut m = LinearMap { input_lens: lens, out_len: self.out_len, entries, bias: self.bias.clone() };
        if uniq.len() < ids.len() {
            m.merge_duplicates();
        }
        (m, uniq)
    }
}
