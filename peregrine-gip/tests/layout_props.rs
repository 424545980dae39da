//! Property tests of layouts (bijectivity of index maps on random odd sizes) and of the
//! diagonal schedules (equal to the dense map on random inputs, for every operator).

use peregrine_gip::linear::Window;
use peregrine_gip::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn rand_vec(r: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| r.gen_range(-1.0..1.0)).collect()
}

#[test]
fn gip_layouts_are_injective_and_round_trip_on_random_sizes() {
    let mut r = StdRng::seed_from_u64(7);
    for case in 0..300 {
        let slots = 1usize << r.gen_range(4..12);
        let c = r.gen_range(1..20);
        let h = r.gen_range(1..70);
        let w = r.gen_range(1..70);
        let mut g = Gip::fresh(c, h, w, slots);
        // Walk a few strided / upsampled derivations too.
        for _ in 0..r.gen_range(0..3) {
            let s = r.gen_range(2..4);
            g = if r.gen_bool(0.6) {
                g.strided(r.gen_range(1..20), g.height.div_ceil(s), g.width.div_ceil(s), s)
            } else {
                g.upsampled(r.gen_range(1..9), g.height * s, g.width * s, s)
            };
        }
        g.validate().unwrap_or_else(|e| panic!("case {case}: {e}"));
        let l = g.layout();
        l.check_injective().unwrap_or_else(|e| panic!("case {case} {g:?}: {e}"));
        assert_eq!(l.len(), g.channels * g.height * g.width);
        let t = rand_vec(&mut r, l.len());
        let packed = l.pack(&t);
        assert_eq!(l.unpack(&packed), t, "case {case}");
        // Padding slots are zero: the packed mass equals the tensor's.
        let mass: f64 = packed.iter().flatten().map(|v| v.abs()).sum();
        let want: f64 = t.iter().map(|v| v.abs()).sum();
        assert!((mass - want).abs() <= 1e-9 * want.max(1.0));
    }
}

#[test]
fn big_maps_split_and_small_maps_multiplex() {
    // 5×300×451 in 2^15 slots: g > 1.
    let g = Gip::fresh(5, 300, 451, 1 << 15);
    assert!(g.split >= 3, "{g:?}");
    assert_eq!(g.ciphertexts(), g.split * g.split * 5usize.div_ceil(g.blocks_per_ct()));
    g.layout().check_injective().unwrap();
    // Stride 2 on 32×32 with 16 channels: g = 1 → 1/2 (mux 2), geometry kept.
    let a = Gip::fresh(16, 32, 32, 1 << 15);
    let b = a.strided(32, 16, 16, 2);
    assert_eq!((b.split, b.mux, b.block_rows, b.row_stride), (1, 2, 32, 32));
    assert_eq!(b.g(), 0.5);
    let c = b.strided(64, 8, 8, 2);
    assert_eq!((c.mux, c.block_rows), (4, 32));
    // Split maps shrink their split first.
    let big = Gip::fresh(3, 256, 256, 1 << 14);
    assert_eq!(big.split, 2);
    let d = big.strided(8, 128, 128, 2);
    assert_eq!((d.split, d.mux), (1, 1));
    assert_eq!(d.upsampled(8, 256, 256, 2).split, 2);
    // 512×512 in 2^15 slots: a split of 3 would fit (171×171), but 4 divides the map and
    // stride-2 layers halve it exactly; two 128×128 blocks per ciphertext, 16 × 2 for three
    // channels (a split of 3: 27).
    let hi = Gip::fresh(3, 512, 512, 1 << 15);
    assert_eq!((hi.split, hi.ciphertexts()), (4, 32));
    let e = hi.strided(16, 256, 256, 2);
    assert_eq!((e.split, e.mux), (2, 1));
    assert_eq!(e.strided(32, 128, 128, 2).split, 1);
    // Where no power of two divides the map, the smallest split that fits.
    assert_eq!(Gip::fresh(3, 513, 512, 1 << 15).split, 3);
}

fn check_plan(map: &LinearMap, ins: &[&Layout], out: &Layout, r: &mut StdRng, what: &str) -> DiagonalPlan {
    let plan = DiagonalPlan::new(map, ins, out).unwrap();
    let xs: Vec<Vec<f64>> = ins.iter().map(|l| rand_vec(r, l.len())).collect();
    let want = map.apply(&xs.iter().map(|v| v.as_slice()).collect::<Vec<_>>());
    let packed: Vec<Vec<Vec<f64>>> = ins.iter().zip(&xs).map(|(l, x)| l.pack(x)).collect();
    let got_slots = plan.apply_clear(&packed);
    let got = out.unpack(&got_slots);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() < 1e-9, "{what}: element {i}: {a} vs {b}");
    }
    // Every copy of a replicated output holds its element; slots outside stay zero.
    for (i, c, s) in out.copies() {
        let (a, b) = (got_slots[c as usize][s as usize], want[i]);
        assert!((a - b).abs() < 1e-9, "{what}: copy of element {i} at ({c}, {s}): {a} vs {b}");
    }
    let mut used = vec![vec![false; out.slots]; out.ciphertexts];
    for (_, c, s) in out.copies() {
        used[c as usize][s as usize] = true;
    }
    for (c, v) in got_slots.iter().enumerate() {
        for (s, x) in v.iter().enumerate() {
            assert!(used[c][s] || *x == 0.0, "{what}: padding slot ({c}, {s}) = {x}");
        }
    }
    plan
}

#[test]
fn diagonal_schedules_equal_the_dense_maps() {
    let mut r = StdRng::seed_from_u64(11);
    let slots = 1 << 10;
    // conv 3×37×53 → 4, stride 2, pad 1, with bias.
    let win = Window { kernel: [3, 3], stride: [2, 2], padding: [1, 1], padding_end: [1, 1], dilation: [1, 1] };
    let w = rand_vec(&mut r, 4 * 3 * 9);
    let b = rand_vec(&mut r, 4);
    let conv = LinearMap::conv2d(3, 37, 53, 4, win, 1, &w, Some(&b));
    let gi = Gip::fresh(3, 37, 53, slots);
    let go = gi.strided(4, 19, 27, 2);
    let p = check_plan(&conv, &[&gi.layout()], &go.layout(), &mut r, "conv s2");
    assert!(p.consumes_level());
    assert!(gi.split > 1 && go.split == 1, "input split {:?} output {:?}", gi, go);
    // Depthwise 5×5 dilated on the multiplexed result.
    let dw = LinearMap::conv2d(
        4,
        19,
        27,
        4,
        Window { kernel: [5, 5], stride: [1, 1], padding: [4, 4], padding_end: [4, 4], dilation: [2, 2] },
        4,
        &rand_vec(&mut r, 4 * 25),
        None,
    );
    check_plan(&dw, &[&go.layout()], &go.layout(), &mut r, "depthwise");
    // Upsample ×2 back.
    let up = LinearMap::upsample(4, 19, 27, 2);
    let gu = go.upsampled(4, 38, 54, 2);
    check_plan(&up, &[&go.layout()], &gu.layout(), &mut r, "upsample");
    // Concat of two differently packed inputs.
    let a = Gip::fresh(2, 38, 54, slots);
    let cat = LinearMap::concat(&[4 * 38 * 54, 2 * 38 * 54]);
    check_plan(&cat, &[&gu.layout(), &a.layout()], &gu.with_channels(6).layout(), &mut r, "concat");
    // Pooling, global pooling + linear composed, option-A shortcut, transposed conv.
    let pool = LinearMap::avg_pool(
        4,
        19,
        27,
        Window { kernel: [3, 3], stride: [2, 2], padding: [1, 1], padding_end: [1, 1], dilation: [1, 1] },
    );
    check_plan(&pool, &[&go.layout()], &go.strided(4, 10, 14, 2).layout(), &mut r, "avgpool");
    let gap = LinearMap::global_avg_pool(4, 19, 27);
    let fc = LinearMap::fully_connected(4, 7, &rand_vec(&mut r, 28), Some(&rand_vec(&mut r, 7)));
    let head = fc.after(&gap);
    check_plan(&head, &[&go.layout()], &Layout::vector(7, slots), &mut r, "gap+fc");
    let sc = LinearMap::subsample_pad(4, 19, 27, 2, 2, 2);
    check_plan(&sc, &[&go.layout()], &go.strided(8, 10, 14, 2).layout(), &mut r, "shortcut");
    let ct = LinearMap::conv_transpose2d(
        4,
        19,
        27,
        3,
        38,
        54,
        Window { kernel: [3, 3], stride: [2, 2], padding: [1, 1], padding_end: [1, 1], dilation: [1, 1] },
        1,
        &rand_vec(&mut r, 4 * 3 * 9),
        Some(&[0.1, 0.2, 0.3]),
    );
    check_plan(&ct, &[&go.layout()], &go.upsampled(3, 38, 54, 2).layout(), &mut r, "conv transpose");
}

#[test]
fn replicated_layouts_give_the_same_maps_from_fewer_diagonals() {
    let mut r = StdRng::seed_from_u64(23);
    let slots = 1 << 12;
    let win = |k: usize, s: usize| Window {
        kernel: [k, k],
        stride: [s, s],
        padding: [k / 2, k / 2],
        padding_end: [k / 2, k / 2],
        dilation: [1, 1],
    };
    // 5×13×11 → 6 (3×3, stride 1), then → 7 (3×3, stride 2), then global pooling + FC (odd sizes).
    let conv1 = LinearMap::conv2d(5, 13, 11, 6, win(3, 1), 1, &rand_vec(&mut r, 6 * 5 * 9), Some(&rand_vec(&mut r, 6)));
    let conv2 = LinearMap::conv2d(6, 13, 11, 7, win(3, 2), 1, &rand_vec(&mut r, 7 * 6 * 9), None);
    let head = LinearMap::fully_connected(7, 3, &rand_vec(&mut r, 21), Some(&rand_vec(&mut r, 3)))
        .after(&LinearMap::global_avg_pool(7, 7, 6));
    let g0 = Gip::fresh(5, 13, 11, slots);
    let g1 = g0.with_channels(6);
    let g2 = g1.strided(7, 7, 6, 2);
    let cases: [(&LinearMap, Layout, Layout, &str); 3] = [
        (&conv1, g0.layout(), g1.layout(), "conv s1"),
        (&conv2, g1.layout(), g2.layout(), "conv s2"),
        (&head, g2.layout(), Layout::vector(3, slots), "gap+fc"),
    ];
    for (map, li, lo, what) in cases {
        let (ri, ro) = (li.clone().replicated(), lo.clone().replicated());
        assert!(ri.replicas > 1 && ro.replicas > 1, "{what}: {} / {} copies", ri.replicas, ro.replicas);
        let plain = check_plan(map, &[&li], &lo, &mut r, what);
        let rep = check_plan(map, &[&ri], &ro, &mut r, &format!("{what}, replicated"));
        // Offsets merge modulo the input's period; an output with more copies than the input
        // (a shorter period) needs up to period_in / period_out times the diagonals.
        let growth = (ri.period() / ro.period()).max(1);
        assert!(
            rep.plaintext_mults() <= plain.plaintext_mults() * growth,
            "{what}: {} diagonals replicated, {} not",
            rep.plaintext_mults(),
            plain.plaintext_mults()
        );
        if growth == 1 {
            assert!(rep.plaintext_mults() < plain.plaintext_mults(), "{what}: no diagonal merged");
        }
        // A replicated input read into a single-copy output works too.
        check_plan(map, &[&ri], &lo, &mut r, &format!("{what}, replicated input only"));
    }
    // A position at or beyond the period is refused by name.
    let mut bad = g0.layout().replicated();
    bad.replicas *= 2;
    let err = DiagonalPlan::new(&conv1, &[&bad], &g1.layout()).unwrap_err();
    assert!(matches!(err, LayoutError::OutOfRange { .. }), "{err}");
}

#[test]
fn identity_placements_pass_through_without_rotations() {
    let g = Gip::fresh(6, 9, 7, 256);
    let l = g.layout();
    let p = DiagonalPlan::new(&LinearMap::identity(l.len()), &[&l], &l).unwrap();
    assert!(!p.consumes_level());
    assert_eq!(p.rotation_count(), 0);
    let sum = DiagonalPlan::new(&LinearMap::sum(2, l.len()), &[&l, &l], &l).unwrap();
    assert!(!sum.consumes_level());
    // Concat where the first input already sits where the output wants it.
    let wide = g.with_channels(8);
    let cat = DiagonalPlan::new(
        &LinearMap::concat(&[6 * 63, 2 * 63]),
        &[&l, &Gip::fresh(2, 9, 7, 256).layout()],
        &wide.layout(),
    )
    .unwrap();
    // The 6 channels of the first input keep their slots in both output ciphertexts.
    assert_eq!(cat.outputs.iter().map(|o| o.passthrough.len()).sum::<usize>(), 2);
    assert!(cat.consumes_level(), "the second input must move");
}

#[test]
fn composition_matches_sequential_application() {
    let mut r = StdRng::seed_from_u64(5);
    let win = Window { kernel: [3, 3], stride: [1, 1], padding: [1, 1], padding_end: [1, 1], dilation: [1, 1] };
    let conv = LinearMap::conv2d(3, 7, 5, 4, win, 1, &rand_vec(&mut r, 108), Some(&rand_vec(&mut r, 4)));
    let bn = LinearMap::affine(4, 35, &rand_vec(&mut r, 4), &rand_vec(&mut r, 4));
    let both = bn.after(&conv);
    let x = rand_vec(&mut r, 105);
    let seq = bn.apply(&[&conv.apply(&[&x])]);
    for (a, b) in both.apply(&[&x]).iter().zip(&seq) {
        assert!((a - b).abs() < 1e-12);
    }
}

#[test]
fn substitution_bound_is_exact_without_overlaps_and_an_upper_bound_with_them() {
    let mut r = StdRng::seed_from_u64(6);
    let same = Window { kernel: [3, 3], stride: [1, 1], padding: [1, 1], padding_end: [1, 1], dilation: [1, 1] };
    let pool = Window { kernel: [5, 5], stride: [1, 1], padding: [2, 2], padding_end: [2, 2], dilation: [1, 1] };
    // A pool then a 1×1 convolution: every product is its own coefficient, the bound is exact.
    let pooled = LinearMap::avg_pool(3, 9, 7, pool);
    let pointwise = LinearMap::conv2d(
        3,
        9,
        7,
        4,
        Window { kernel: [1, 1], padding: [0, 0], padding_end: [0, 0], ..same },
        1,
        &rand_vec(&mut r, 12),
        None,
    );
    let exact = pointwise.after(&pooled);
    assert_eq!(pointwise.substitute_bound(&[Some(&pooled)]), exact.entries.len());
    assert!(exact.entries.len() > 4 * pointwise.entries.len(), "a 5×5 pool multiplies the coefficients");
    // Two 3×3 convolutions: products overlap and merge, the bound stays above the result.
    let a = LinearMap::conv2d(3, 9, 7, 3, same, 1, &rand_vec(&mut r, 81), None);
    let b = LinearMap::conv2d(3, 9, 7, 2, same, 1, &rand_vec(&mut r, 54), None);
    let merged = b.after(&a);
    let bound = b.substitute_bound(&[Some(&a)]);
    assert!(bound > merged.entries.len(), "bound {bound}, composed {}", merged.entries.len());
    // Identities and untouched inputs count one coefficient each.
    assert_eq!(b.substitute_bound(&[None]), b.entries.len());
    assert_eq!(b.substitute_bound(&[Some(&LinearMap::identity(189))]), b.entries.len());
}
