//! Layouts: where each element of a tensor lives among ciphertext slots.
//!
//! A [`Gip`] descriptor packs a `C×H×W` map with two integer factors:
//! - `split` (s ≥ 1): the map is cut into s² interleaved sub-maps `x[:, a::s, b::s]`, each in
//!   its own ciphertext(s) — this is how a map larger than the slot count fits;
//! - `mux` (k ≥ 1): k² channels are interleaved in one block, channel `c` taking the pixel
//!   positions `(y·k + i, x·k + j)` with `(i, j) = divmod(c mod k², k)`, as in multiplexed
//!   parallel convolution.
//!
//! The packing factor is g = split / mux. A stride-s operation maps g to g/s (split shrinks
//! when it can, mux grows otherwise) and keeps the block geometry, so the rotation offsets of
//! the next layer stay position-independent. Blocks of `block_rows × row_stride` slots sit side
//! by side in a ciphertext; padding slots hold zeros and are never read as data.
//!
//! Sizes are arbitrary (odd, prime, non-square): block dimensions are ceilings and the padding
//! is exactly what the ceilings leave.
//!
//! A layout whose positions all lie below `slots / r` (r a power of two) can hold r copies of
//! its content ([`Layout::replicas`]): later layers of a CNN fill a fraction of the slots, and
//! with copies a linear map needs its rotation offsets only modulo the period, so offsets r and
//! r − period share one diagonal (ResNet-20 on 2^15 slots: 14,892 plaintext products without
//! copies, 8,543 with). Copies cost nothing to make: the diagonals producing a replicated
//! tensor carry every copy, and the client packs the input replicated.

use serde::{Deserialize, Serialize};

/// An inconsistent layout or a map that does not fit its layouts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A descriptor with a zero size.
    #[error("layout has a zero size: {0}")]
    ZeroSize(String),
    /// A sub-map larger than its block.
    #[error("sub-map does not fit the block: {0}")]
    BlockOverflow(String),
    /// A block larger than a ciphertext.
    #[error("block of {block} slots exceeds {slots} slots")]
    TooWide {
        /// Slots of a block.
        block: usize,
        /// Slots of a ciphertext.
        slots: usize,
    },
    /// An element placed outside the ciphertexts.
    #[error("element {element} at ({ct}, {slot}) is outside {cts} × {slots}")]
    OutOfRange {
        /// The element.
        element: usize,
        /// Its ciphertext.
        ct: u32,
        /// Its slot.
        slot: u32,
        /// Ciphertexts of the layout.
        cts: usize,
        /// Slots per ciphertext.
        slots: usize,
    },
    /// Two elements in one slot.
    #[error("element {element} shares slot ({ct}, {slot}) with another element")]
    Collision {
        /// The element.
        element: usize,
        /// Its ciphertext.
        ct: u32,
        /// Its slot.
        slot: u32,
    },
    /// A map with another number of inputs than layouts.
    #[error("map has {map} inputs, {layouts} layouts given")]
    InputCount {
        /// Inputs of the map.
        map: usize,
        /// Layouts given.
        layouts: usize,
    },
    /// An input layout of the wrong size.
    #[error("input {input}: layout holds {layout} elements, map expects {map}")]
    InputLen {
        /// The input.
        input: usize,
        /// Elements of its layout.
        layout: usize,
        /// Elements the map expects.
        map: usize,
    },
    /// Layouts of different ciphertext sizes.
    #[error("input and output layouts have different slot counts")]
    SlotMismatch,
    /// An output layout of the wrong size.
    #[error("output layout holds {layout} elements, map produces {map}")]
    OutputLen {
        /// Elements of the layout.
        layout: usize,
        /// Elements the map produces.
        map: usize,
    },
    /// Beyond what the schedule's packed keys can index.
    #[error("layout too large to schedule (slots < 2^24, ciphertexts < 2^16, inputs < 2^8)")]
    TooLarge,
}

/// A slot of a ciphertext: `(ciphertext index, slot index)`.
pub type Position = (u32, u32);

/// A GIP descriptor for a `C×H×W` tensor (vectors are `F×1×1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gip {
    /// Channels C.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
    /// Sub-map factor s ≥ 1 (s² sub-maps).
    pub split: usize,
    /// Channel multiplexing factor k ≥ 1 (k² channels per block).
    pub mux: usize,
    /// Rows of one block (≥ ceil(H/split) · mux).
    pub block_rows: usize,
    /// Slots per block row (≥ ceil(W/split) · mux).
    pub row_stride: usize,
    /// Slots per ciphertext.
    pub slots: usize,
}

impl Gip {
    /// The compact layout of a `C×H×W` tensor in `slots`-slot ciphertexts: the smallest split
    /// whose sub-map fits a ciphertext, no multiplexing — or, when that split is not a power
    /// of two, the next power of two if it divides H and W. Stride-2 layers halve a power-of-
    /// two split exactly; a split of 3 (3×512×512 in 32,768 slots) makes them multiplex
    /// channels instead: the first and the fourth convolution of a 512×512 YOLOv8n needed
    /// 1,341 and 1,539 rotations with a split of 3, 68 and 104 with 4.
    pub fn fresh(channels: usize, height: usize, width: usize, slots: usize) -> Gip {
        let mut split = 1;
        while height.div_ceil(split) * width.div_ceil(split) > slots {
            split += 1;
        }
        let power = split.next_power_of_two();
        if power != split && height % power == 0 && width % power == 0 {
            split = power;
        }
        Gip {
            channels,
            height,
            width,
            split,
            mux: 1,
            block_rows: height.div_ceil(split),
            row_stride: width.div_ceil(split),
            slots,
        }
    }

    /// The same packing for a tensor of another channel count (same H, W, geometry).
    pub fn with_channels(&self, channels: usize) -> Gip {
        Gip { channels, ..self.clone() }
    }

    /// Packing of the output of a stride-`s` operation producing `height × width`:
    /// g → g/s, keeping the block geometry when the result fits in it.
    pub fn strided(&self, channels: usize, height: usize, width: usize, s: usize) -> Gip {
        let (split, mux) = if self.split % s == 0 { (self.split / s, self.mux) } else { (self.split, self.mux * s) };
        self.refit(channels, height, width, split, mux)
    }

    /// Packing of the output of an upsampling by `s` producing `height × width`: g → g·s.
    pub fn upsampled(&self, channels: usize, height: usize, width: usize, s: usize) -> Gip {
        let (split, mux) = if self.mux % s == 0 { (self.split, self.mux / s) } else { (self.split * s, self.mux) };
        self.refit(channels, height, width, split, mux)
    }

    fn refit(&self, channels: usize, height: usize, width: usize, split: usize, mux: usize) -> Gip {
        let rows = height.div_ceil(split) * mux;
        let cols = width.div_ceil(split) * mux;
        let keep = rows <= self.block_rows && cols <= self.row_stride;
        let cand = Gip {
            channels,
            height,
            width,
            split,
            mux,
            block_rows: if keep { self.block_rows } else { rows },
            row_stride: if keep { self.row_stride } else { cols },
            slots: self.slots,
        };
        if cand.block_slots() <= self.slots {
            cand
        } else {
            Gip::fresh(channels, height, width, self.slots)
        }
    }

    /// The packing factor g = split / mux.
    pub fn g(&self) -> f64 {
        self.split as f64 / self.mux as f64
    }
    /// Slots of one block.
    pub fn block_slots(&self) -> usize {
        self.block_rows * self.row_stride
    }
    /// Blocks per ciphertext.
    pub fn blocks_per_ct(&self) -> usize {
        (self.slots / self.block_slots()).max(1)
    }
    /// Blocks needed per sub-map (each block holds mux² channels).
    pub fn blocks(&self) -> usize {
        self.channels.div_ceil(self.mux * self.mux)
    }
    /// Ciphertexts per sub-map.
    pub fn cts_per_submap(&self) -> usize {
        self.blocks().div_ceil(self.blocks_per_ct())
    }
    /// Total ciphertexts.
    pub fn ciphertexts(&self) -> usize {
        self.split * self.split * self.cts_per_submap()
    }
    /// Checks the descriptor is consistent (fits its slots, non-zero sizes).
    pub fn validate(&self) -> Result<(), LayoutError> {
        if [self.channels, self.height, self.width, self.split, self.mux, self.block_rows, self.row_stride, self.slots]
            .contains(&0)
        {
            return Err(LayoutError::ZeroSize(format!("{self:?}")));
        }
        if self.height.div_ceil(self.split) * self.mux > self.block_rows
            || self.width.div_ceil(self.split) * self.mux > self.row_stride
        {
            return Err(LayoutError::BlockOverflow(format!("{self:?}")));
        }
        if self.block_slots() > self.slots {
            return Err(LayoutError::TooWide { block: self.block_slots(), slots: self.slots });
        }
        Ok(())
    }

    /// Position of tensor element `(c, y, x)`.
    pub fn position(&self, c: usize, y: usize, x: usize) -> Position {
        let (s, k) = (self.split, self.mux);
        let sub = (y % s) * s + (x % s);
        let (by, bx) = (y / s, x / s);
        let m = c % (k * k);
        let blk = c / (k * k);
        let row = by * k + m / k;
        let col = bx * k + m % k;
        let bpc = self.blocks_per_ct();
        let ct = sub * self.cts_per_submap() + blk / bpc;
        let slot = (blk % bpc) * self.block_slots() + row * self.row_stride + col;
        (ct as u32, slot as u32)
    }

    /// The explicit layout (every element's position, in C-H-W order).
    pub fn layout(&self) -> Layout {
        let mut pos = Vec::with_capacity(self.channels * self.height * self.width);
        for c in 0..self.channels {
            for y in 0..self.height {
                for x in 0..self.width {
                    pos.push(self.position(c, y, x));
                }
            }
        }
        Layout {
            positions: pos,
            ciphertexts: self.ciphertexts(),
            slots: self.slots,
            gip: Some(self.clone()),
            dirty: false,
            replicas: 1,
        }
    }
}

/// An explicit layout: the position of every tensor element (flat C-H-W order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    /// Position of element `i`.
    pub positions: Vec<Position>,
    /// Number of ciphertexts.
    pub ciphertexts: usize,
    /// Slots per ciphertext.
    pub slots: usize,
    /// The GIP descriptor this layout comes from, if any.
    pub gip: Option<Gip>,
    /// Whether slots outside `positions` may hold garbage (e.g. after a rotate-and-sum); such
    /// a tensor may only be read through masks (diagonals), never passed through as is.
    #[serde(default)]
    pub dirty: bool,
    /// Copies of every ciphertext's content (a power of two): slot `s + k·period` holds the
    /// same element as slot `s` for every position `s` and `k < replicas`, with
    /// `period = slots / replicas` (all positions lie below the period). A linear map reading
    /// a replicated tensor needs its rotation offsets only modulo the period, which merges
    /// diagonals; writing one costs nothing (the diagonals carry the copies).
    #[serde(default = "one")]
    pub replicas: usize,
}

fn one() -> usize {
    1
}

impl Layout {
    /// A dense vector layout: element i at slot i mod slots of ciphertext i / slots.
    pub fn vector(len: usize, slots: usize) -> Layout {
        Layout {
            positions: (0..len).map(|i| ((i / slots) as u32, (i % slots) as u32)).collect(),
            ciphertexts: len.div_ceil(slots).max(1),
            slots,
            gip: None,
            dirty: false,
            replicas: 1,
        }
    }

    /// Slots between two copies (`slots / replicas`).
    pub fn period(&self) -> usize {
        self.slots / self.replicas.max(1)
    }

    /// The same layout with as many copies as fit: the largest power of two `r` with every
    /// position below `slots / r` (1 when the slot count is not a power of two).
    pub fn replicated(mut self) -> Layout {
        let top = self.positions.iter().map(|p| p.1 as usize + 1).max().unwrap_or(1);
        self.replicas = if self.slots.is_power_of_two() { (self.slots / top.next_power_of_two()).max(1) } else { 1 };
        self
    }

    /// Every slot holding element data: `(element, ciphertext, slot)` for each position and
    /// each of its copies.
    pub fn copies(&self) -> impl Iterator<Item = (usize, u32, u32)> + '_ {
        let period = self.period() as u32;
        self.positions
            .iter()
            .enumerate()
            .flat_map(move |(i, &(ct, slot))| (0..self.replicas as u32).map(move |k| (i, ct, slot + k * period)))
    }

    /// Rotation steps of [`Layout::rotate_and_sum_steps`]-style sums: computing
    /// `Σ_{j<n} rot(x, j·stride)` by doubling needs these rotations, in order
    /// (`(step, kind)` with kind 0 = doubling `p += rot(p, step)`, 1 = accumulate `acc += rot(p, step)`).
    pub fn rotate_and_sum_steps(n: usize, stride: i64) -> Vec<(i64, u8)> {
        let mut out = Vec::new();
        let (mut covered, mut shift) = (1usize, 0usize);
        let mut bit = 0;
        loop {
            if n & (1 << bit) != 0 {
                out.push((shift as i64 * stride, 1));
                shift += covered;
            }
            if (1usize << (bit + 1)) > n {
                break;
            }
            out.push((covered as i64 * stride, 0));
            covered *= 2;
            bit += 1;
        }
        out
    }

    /// Number of tensor elements.
    pub fn len(&self) -> usize {
        self.positions.len()
    }
    /// Whether the layout holds no element.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Checks that no two elements share a slot and every position is in range.
    pub fn check_injective(&self) -> Result<(), LayoutError> {
        let mut seen = vec![false; self.ciphertexts * self.slots];
        for (i, &(ct, slot)) in self.positions.iter().enumerate() {
            if ct as usize >= self.ciphertexts || slot as usize >= self.period() {
                return Err(LayoutError::OutOfRange {
                    element: i,
                    ct,
                    slot,
                    cts: self.ciphertexts,
                    slots: self.period(),
                });
            }
            let k = ct as usize * self.slots + slot as usize;
            if seen[k] {
                return Err(LayoutError::Collision { element: i, ct, slot });
            }
            seen[k] = true;
        }
        Ok(())
    }

    /// Packs a flat tensor into `ciphertexts` slot vectors, every copy included (padding
    /// slots are zero).
    pub fn pack(&self, values: &[f64]) -> Vec<Vec<f64>> {
        assert_eq!(values.len(), self.positions.len(), "tensor size does not match the layout");
        let mut out = vec![vec![0.0; self.slots]; self.ciphertexts];
        for (i, ct, slot) in self.copies() {
            out[ct as usize][slot as usize] = values[i];
        }
        out
    }

    /// Reads a flat tensor back from slot vectors.
    pub fn unpack(&self, cts: &[Vec<f64>]) -> Vec<f64> {
        self.positions.iter().map(|&(ct, slot)| cts[ct as usize][slot as usize]).collect()
    }

    /// Description for reports: the GIP factors or `vector`.
    pub fn describe(&self) -> String {
        match &self.gip {
            Some(g) => format!(
                "gip g={}{} ({} ct{}, block {}x{})",
                if g.split >= g.mux { format!("{}", g.split / g.mux) } else { format!("1/{}", g.mux / g.split) },
                if g.split > 1 && g.mux > 1 { format!(" [split {} mux {}]", g.split, g.mux) } else { String::new() },
                self.ciphertexts,
                if self.ciphertexts == 1 { "" } else { "s" },
                g.block_rows,
                g.row_stride
            ),
            None => format!("vector ({} ct{})", self.ciphertexts, if self.ciphertexts == 1 { "" } else { "s" }),
        }
    }
}
