//! The synthetic tissue model: where the tissue regions are, where each
//! nucleus lies and whether it is Ki-67 positive, and the colour of every
//! pixel. Everything is a pure function of (seed, position), so any tile can
//! be rendered alone, in any order, with no state: that is what keeps the
//! generator's memory bounded and its output deterministic.

use serde::Serialize;

/// Nuclei sit on a jittered grid of this pitch (level-0 pixels). With
/// semi-axes up to 8 px and a jitter of ±6 px, neighbours now and then
/// touch, as in real tissue, and then count as one for a simple analysis.
pub const PITCH: u32 = 26;
const JITTER: f64 = 6.0;
/// Free glass kept around each region inside its layout cell (> 2 tiles
/// between neighbours, so tissue regions never share a tile).
const MARGIN: f64 = 272.0;
const TARGET_CELL: f64 = 1536.0;

/// Optical density per unit stain, per R, G, B. Close to, but on purpose not
/// the same as, the Ruifrok–Johnston vectors the analysis assumes, as real
/// stains never match the textbook either.
const HEMATOXYLIN: [f32; 3] = [0.644, 0.717, 0.267];
const DAB: [f32; 3] = [0.270, 0.570, 0.780];
/// Clean glass (OD ≈ 0.02, RGB ≈ 243 243 241).
const GLASS_OD: [f32; 3] = [0.021, 0.021, 0.024];

/// One tissue region: a star-shaped blob (an ellipse whose radius is
/// modulated by two harmonics) with its own Ki-67 positivity.
#[derive(Debug, Clone, Serialize)]
pub struct Region {
    pub id: usize,
    pub cx: f64,
    pub cy: f64,
    pub rx: f64,
    pub ry: f64,
    /// (amplitude, frequency, phase) of the radius modulation.
    pub harmonics: [(f64, u32, f64); 2],
    /// Probability that a nucleus here is positive (the nominal index).
    pub positive_probability: f64,
    /// Probability that a grid site here holds a nucleus.
    pub density: f64,
    /// Hematoxylin in the cytoplasm/stroma between nuclei.
    pub background_h: f64,
}

impl Region {
    fn modulation(&self, theta: f64) -> f64 {
        1.0 + self
            .harmonics
            .iter()
            .map(|&(a, k, p)| a * (f64::from(k) * theta + p).sin())
            .sum::<f64>()
    }

    fn spread(&self) -> f64 {
        self.harmonics.iter().map(|h| h.0).sum()
    }

    /// Whether level-0 point (x, y) lies inside the region.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        let (u, v) = ((x - self.cx) / self.rx, (y - self.cy) / self.ry);
        let r2 = u * u + v * v;
        let s = self.spread();
        if r2 > (1.0 + s) * (1.0 + s) {
            return false;
        }
        if r2 < (1.0 - s) * (1.0 - s) {
            return true;
        }
        r2.sqrt() <= self.modulation(v.atan2(u))
    }

    /// Bounding box (x0, y0, x1, y1), level-0 pixels.
    pub fn bbox(&self) -> [f64; 4] {
        let s = 1.0 + self.spread();
        [
            self.cx - self.rx * s,
            self.cy - self.ry * s,
            self.cx + self.rx * s,
            self.cy + self.ry * s,
        ]
    }

    /// The outline as a polygon of `n` vertices.
    pub fn polygon(&self, n: usize) -> Vec<[f64; 2]> {
        (0..n)
            .map(|i| {
                let t = i as f64 / n as f64 * std::f64::consts::TAU;
                let m = self.modulation(t);
                let x = self.cx + self.rx * m * t.cos();
                let y = self.cy + self.ry * m * t.sin();
                [(x * 10.0).round() / 10.0, (y * 10.0).round() / 10.0]
            })
            .collect()
    }
}

/// One nucleus: an ellipse with its stain amounts.
#[derive(Debug, Clone, Copy)]
pub struct Nucleus {
    pub x: f64,
    pub y: f64,
    a: f64,
    b: f64,
    cos: f64,
    sin: f64,
    h: f32,
    d: f32,
    pub positive: bool,
    pub region: usize,
}

/// Deterministic hashing (SplitMix64 finaliser): no RNG state anywhere.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash(seed: u64, a: u64, b: u64, salt: u64) -> u64 {
    mix(mix(mix(seed ^ salt.wrapping_mul(0xd6e8_feb8_6659_fd93)) ^ a) ^ b)
}

/// A stream of uniforms in [0, 1) drawn from one hash.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> f64 {
        self.0 = mix(self.0);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

/// The whole slide's model.
pub struct Model {
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub cols: u32,
    pub rows: u32,
    cell_w: f64,
    cell_h: f64,
    pub regions: Vec<Region>,
}

impl Model {
    /// Lays out regions on a grid of cells about 1536 px square (2 to 8
    /// across and down), each with its own index drawn from the seed.
    pub fn new(seed: u64, width: u32, height: u32) -> Model {
        let count = |len: u32| ((f64::from(len) / TARGET_CELL).round() as u32).clamp(2, 8);
        let (cols, rows) = (count(width), count(height));
        let cell_w = f64::from(width) / f64::from(cols);
        let cell_h = f64::from(height) / f64::from(rows);
        let mut regions = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                let id = regions.len();
                let mut d = Draws(hash(seed, u64::from(c), u64::from(r), 1));
                let harmonics = [
                    (
                        0.08,
                        2 + (d.next() * 2.0) as u32,
                        d.range(0.0, std::f64::consts::TAU),
                    ),
                    (
                        0.05,
                        4 + (d.next() * 3.0) as u32,
                        d.range(0.0, std::f64::consts::TAU),
                    ),
                ];
                let s = 1.0 + harmonics[0].0 + harmonics[1].0;
                // Small slides get thinner margins (regions may then share tiles).
                let margin = MARGIN.min(cell_w.min(cell_h) / 4.0);
                let round2 = |v: f64| (v * 100.0).round() / 100.0;
                regions.push(Region {
                    id,
                    cx: (f64::from(c) + 0.5) * cell_w,
                    cy: (f64::from(r) + 0.5) * cell_h,
                    rx: ((cell_w / 2.0 - margin) / s).max(16.0),
                    ry: ((cell_h / 2.0 - margin) / s).max(16.0),
                    harmonics: [
                        (harmonics[0].0, harmonics[0].1, round2(harmonics[0].2)),
                        (harmonics[1].0, harmonics[1].1, round2(harmonics[1].2)),
                    ],
                    positive_probability: round2(d.range(0.03, 0.85)),
                    density: round2(d.range(0.55, 0.85)),
                    background_h: round2(d.range(0.05, 0.10)),
                });
            }
        }
        Model {
            seed,
            width,
            height,
            cols,
            rows,
            cell_w,
            cell_h,
            regions,
        }
    }

    /// The region at level-0 point (x, y), if any (one candidate per cell).
    pub fn region_at(&self, x: f64, y: f64) -> Option<&Region> {
        if x < 0.0 || y < 0.0 {
            return None;
        }
        let c = (x / self.cell_w) as u32;
        let r = (y / self.cell_h) as u32;
        if c >= self.cols || r >= self.rows {
            return None;
        }
        let reg = &self.regions[(r * self.cols + c) as usize];
        reg.contains(x, y).then_some(reg)
    }

    /// Grid sites across and down.
    pub fn sites(&self) -> (u32, u32) {
        (self.width.div_ceil(PITCH), self.height.div_ceil(PITCH))
    }

    /// The nucleus at grid site (i, j), if the site holds one.
    pub fn nucleus(&self, i: u32, j: u32) -> Option<Nucleus> {
        let mut d = Draws(hash(self.seed, u64::from(i), u64::from(j), 2));
        let x = (f64::from(i) + 0.5) * f64::from(PITCH) + d.range(-JITTER, JITTER);
        let y = (f64::from(j) + 0.5) * f64::from(PITCH) + d.range(-JITTER, JITTER);
        let region = self.region_at(x, y)?;
        if d.next() >= region.density {
            return None;
        }
        let positive = d.next() < region.positive_probability;
        let a = d.range(5.0, 8.0);
        let b = d.range(4.5, a.min(7.5));
        let angle = d.range(0.0, std::f64::consts::PI);
        let (h, dab) = if positive {
            // Weakly to strongly stained: the weakest are hard to call.
            (d.range(0.12, 0.30), d.range(0.20, 0.90))
        } else {
            (d.range(0.45, 0.85), d.range(0.0, 0.04))
        };
        Some(Nucleus {
            x,
            y,
            a,
            b,
            cos: angle.cos(),
            sin: angle.sin(),
            h: h as f32,
            d: dab as f32,
            positive,
            region: region.id,
        })
    }

    /// The glass colour, also used to pad edge tiles.
    pub fn glass() -> [u8; 3] {
        let mut c = [0u8; 3];
        for (k, v) in c.iter_mut().enumerate() {
            *v = (255.0 * 10f32.powf(-GLASS_OD[k])).round() as u8;
        }
        c
    }

    /// Renders the level-0 rectangle (x0, y0, w, h) as RGB into `out`.
    pub fn render(&self, x0: u32, y0: u32, w: u32, h: u32, out: &mut [u8], s: &mut Scratch) {
        let n = (w * h) as usize;
        let Scratch {
            h: hbuf,
            d: dbuf,
            noise,
            transmit,
        } = s;
        hbuf.clear();
        hbuf.resize(n, 0.0);
        dbuf.clear();
        dbuf.resize(n, 0.0);
        // One hash per pixel, cut into four 16-bit uniforms.
        noise.clear();
        for yy in 0..h {
            for xx in 0..w {
                noise.push(hash(self.seed, u64::from(x0 + xx), u64::from(y0 + yy), 3));
            }
        }
        if transmit.is_empty() {
            *transmit = (0..=OD_STEPS * 4)
                .map(|i| 255.0 * 10f32.powf(-(i as f32) / OD_STEPS as f32))
                .collect();
        }
        // Tissue background where the rectangle meets a region.
        for r in &self.regions {
            let [bx0, by0, bx1, by1] = r.bbox();
            if bx1 < f64::from(x0)
                || by1 < f64::from(y0)
                || bx0 > f64::from(x0 + w)
                || by0 > f64::from(y0 + h)
            {
                continue;
            }
            for yy in 0..h {
                for xx in 0..w {
                    let (px, py) = (f64::from(x0 + xx) + 0.5, f64::from(y0 + yy) + 0.5);
                    if r.contains(px, py) {
                        let i = (yy * w + xx) as usize;
                        let t = field(noise[i], 0);
                        hbuf[i] = r.background_h as f32 * (0.8 + 0.4 * t);
                        // Faint non-specific DAB in the cytoplasm.
                        dbuf[i] = 0.01 + 0.03 * field(noise[i], 1);
                    }
                }
            }
        }
        // Nuclei from every grid site whose nucleus can reach the rectangle.
        let reach = 8;
        let i0 = x0.saturating_sub(reach) / PITCH;
        let j0 = y0.saturating_sub(reach) / PITCH;
        let i1 = ((x0 + w + reach) / PITCH).min(self.sites().0.saturating_sub(1));
        let j1 = ((y0 + h + reach) / PITCH).min(self.sites().1.saturating_sub(1));
        for j in j0..=j1 {
            for i in i0..=i1 {
                if let Some(nu) = self.nucleus(i, j) {
                    stamp(&nu, x0, y0, w, h, hbuf, dbuf, noise);
                }
            }
        }
        // Beer–Lambert: stain amounts to RGB, plus a little sensor noise.
        for yy in 0..h {
            for xx in 0..w {
                let i = (yy * w + xx) as usize;
                // Glass stays flat: noise there would only cost file size.
                let noise = if hbuf[i] > 0.0 {
                    field(noise[i], 2) * 3.0 - 1.5
                } else {
                    0.0
                };
                for k in 0..3 {
                    let od = hbuf[i] * HEMATOXYLIN[k] + dbuf[i] * DAB[k] + GLASS_OD[k];
                    let step = ((od * OD_STEPS as f32).round() as usize).min(transmit.len() - 1);
                    let v = transmit[step] + noise;
                    out[i * 3 + k] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

/// Optical density is looked up in steps of 1/OD_STEPS (from 0 to 4).
const OD_STEPS: usize = 1024;

/// Per-tile buffers, reused from tile to tile.
#[derive(Default)]
pub struct Scratch {
    h: Vec<f32>,
    d: Vec<f32>,
    noise: Vec<u64>,
    /// 255 · 10^(−OD) per OD step.
    transmit: Vec<f32>,
}

/// The `k`-th 16-bit uniform in [0, 1) of a pixel's hash.
fn field(hash: u64, k: u32) -> f32 {
    ((hash >> (16 * k)) & 0xffff) as f32 / 65536.0
}

/// Paints one nucleus (anti-aliased edge, grainy chromatin).
#[allow(clippy::too_many_arguments)]
fn stamp(
    nu: &Nucleus,
    x0: u32,
    y0: u32,
    w: u32,
    h: u32,
    hbuf: &mut [f32],
    dbuf: &mut [f32],
    noise: &[u64],
) {
    let ext = nu.a + 1.0;
    let lo = |c: f64, o: u32| ((c - ext).floor().max(f64::from(o))) as u32;
    let hi = |c: f64, o: u32, len: u32| ((c + ext).ceil().min(f64::from(o + len))) as u32;
    let mean = (nu.a + nu.b) / 2.0;
    for py in lo(nu.y, y0)..hi(nu.y, y0, h) {
        for px in lo(nu.x, x0)..hi(nu.x, x0, w) {
            let dx = f64::from(px) + 0.5 - nu.x;
            let dy = f64::from(py) + 0.5 - nu.y;
            let u = (dx * nu.cos + dy * nu.sin) / nu.a;
            let v = (-dx * nu.sin + dy * nu.cos) / nu.b;
            let q = (u * u + v * v).sqrt();
            let alpha = ((1.0 - q) * mean + 0.5).clamp(0.0, 1.0) as f32;
            if alpha <= 0.0 {
                continue;
            }
            let i = ((py - y0) * w + (px - x0)) as usize;
            let grain = 0.8 + 0.4 * field(noise[i], 3);
            hbuf[i] = hbuf[i] * (1.0 - alpha) + alpha * nu.h * grain;
            dbuf[i] = dbuf[i] * (1.0 - alpha) + alpha * nu.d * grain;
        }
    }
}

/// Ground truth of one region, as written to the truth JSON.
#[derive(Debug, Serialize)]
pub struct RegionTruth {
    pub id: usize,
    /// Bounding box [x0, y0, x1, y1] in level-0 pixels.
    pub bbox: [u32; 4],
    pub center: [f64; 2],
    /// Outline (72 vertices, level-0 pixels).
    pub polygon: Vec<[f64; 2]>,
    pub nominal_index_percent: f64,
    pub nuclei: u64,
    pub positive: u64,
    /// Realised Ki-67 index: positive / nuclei × 100.
    pub ki67_index_percent: f64,
}

/// Counts every nucleus per region (one pass over the grid sites).
pub fn truth(model: &Model) -> Vec<RegionTruth> {
    let mut counts = vec![(0u64, 0u64); model.regions.len()];
    let (si, sj) = model.sites();
    for j in 0..sj {
        for i in 0..si {
            if let Some(n) = model.nucleus(i, j) {
                counts[n.region].0 += 1;
                counts[n.region].1 += u64::from(n.positive);
            }
        }
    }
    model
        .regions
        .iter()
        .zip(counts)
        .map(|(r, (nuclei, positive))| {
            let b = r.bbox();
            RegionTruth {
                id: r.id,
                bbox: [
                    b[0].floor().max(0.0) as u32,
                    b[1].floor().max(0.0) as u32,
                    b[2].ceil() as u32,
                    b[3].ceil() as u32,
                ],
                center: [r.cx, r.cy],
                polygon: r.polygon(72),
                nominal_index_percent: r.positive_probability * 100.0,
                nuclei,
                positive,
                ki67_index_percent: if nuclei == 0 {
                    0.0
                } else {
                    (positive as f64 * 10_000.0 / nuclei as f64).round() / 100.0
                },
            }
        })
        .collect()
}
