//! `tresor-slide`: writes a synthetic virtual slide — a pyramidal tiled TIFF
//! of Ki-67 (DAB) / hematoxylin stained tissue on glass — and its ground
//! truth as JSON beside it. Deterministic for a seed; memory bounded by one
//! row of tiles per pyramid level, whatever the slide's height.
//! See docs/SLIDES.md.

mod model;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use model::{Model, RegionTruth};
use tresor::slide::{pyramid, LevelSize, SlideMeta, SlideWriter, BPP, TILE};

/// Microns per pixel at level 0 (a 20× scan).
const MPP: f64 = 0.5;

#[derive(Parser)]
#[command(
    name = "tresor-slide",
    version,
    about = "Write a synthetic Ki-67 virtual slide (pyramidal tiled TIFF) and its ground truth"
)]
struct Args {
    /// The slide to write; the truth goes to the same name with
    /// `.truth.json` in place of the extension.
    #[arg(long)]
    out: PathBuf,
    /// Seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// small (4096x3072), medium (16384x12288), large (65536x49152)
    /// or WIDTHxHEIGHT in level-0 pixels.
    #[arg(long, default_value = "small")]
    size: String,
    /// Write BigTIFF even when classic TIFF would do (it is chosen
    /// anyway when the slide could pass 4 GiB).
    #[arg(long)]
    bigtiff: bool,
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = match s {
        "small" => (4096, 3072),
        "medium" => (16384, 12288),
        "large" => (65536, 49152),
        _ => {
            let (w, h) = s.split_once('x').with_context(|| {
                format!("--size {s:?}: use small, medium, large or WIDTHxHEIGHT")
            })?;
            let p = |v: &str| {
                v.parse::<u32>()
                    .with_context(|| format!("--size {s:?}: {v:?} is not a pixel count"))
            };
            (p(w)?, p(h)?)
        }
    };
    // Each region cell needs room for its glass margin; 2^20 keeps the
    // tile tables and grid-site arithmetic comfortably inside u32.
    if !(1024..=1 << 20).contains(&w) || !(1024..=1 << 20).contains(&h) {
        bail!("--size {s:?}: width and height must be between 1024 and 1048576");
    }
    Ok((w, h))
}

fn truth_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "slide".into());
    out.with_file_name(format!("{stem}.truth.json"))
}

/// One pyramid level's row of tiles being assembled.
struct Strip {
    size: LevelSize,
    buf: Vec<u8>,
    /// Rows filled in `buf`.
    rows: u32,
    /// Next tile row to write.
    ty: u32,
}

struct Pyramid {
    writer: SlideWriter<std::io::BufWriter<std::fs::File>>,
    strips: Vec<Strip>,
    tile: Vec<u8>,
    pad: [u8; 3],
}

impl Pyramid {
    /// Writes level `l`'s full strip as tiles, then feeds its 2×2 average
    /// to level l+1, which is written in turn once it holds a tile row.
    fn emit(&mut self, l: usize) -> Result<()> {
        let s = &self.strips[l];
        let (ntx, _) = s.size.tiles(TILE);
        let width = s.size.width as usize;
        for tx in 0..ntx {
            for px in self.tile.chunks_exact_mut(BPP) {
                px.copy_from_slice(&self.pad);
            }
            let x0 = (tx * TILE) as usize;
            let n = (width - x0).min(TILE as usize) * BPP;
            for r in 0..s.rows as usize {
                let src = (r * width + x0) * BPP;
                let dst = r * TILE as usize * BPP;
                self.tile[dst..dst + n].copy_from_slice(&s.buf[src..src + n]);
            }
            self.writer.write_tile(l, tx, s.ty, &self.tile)?;
        }
        let rows = s.rows;
        self.strips[l].ty += 1;
        self.strips[l].rows = 0;
        if l + 1 < self.strips.len() {
            let (lo, hi) = self.strips.split_at_mut(l + 1);
            let (src, dst) = (&lo[l], &mut hi[0]);
            let (sw, dw) = (src.size.width as usize, dst.size.width as usize);
            let out_rows = rows.div_ceil(2);
            for r in 0..out_rows as usize {
                let r0 = 2 * r;
                let r1 = (2 * r + 1).min(rows as usize - 1);
                let drow = (dst.rows as usize + r) * dw * BPP;
                for x in 0..dw {
                    let x0 = 2 * x;
                    let x1 = (2 * x + 1).min(sw - 1);
                    for k in 0..BPP {
                        let at =
                            |row: usize, col: usize| u32::from(src.buf[(row * sw + col) * BPP + k]);
                        let sum = at(r0, x0) + at(r0, x1) + at(r1, x0) + at(r1, x1);
                        dst.buf[drow + x * BPP + k] = ((sum + 2) / 4) as u8;
                    }
                }
            }
            dst.rows += out_rows;
            if dst.rows == TILE || dst.ty * TILE + dst.rows == dst.size.height {
                self.emit(l + 1)?;
            }
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Truth<'a> {
    generator: &'static str,
    seed: u64,
    width: u32,
    height: u32,
    tile: u32,
    levels: Vec<[u32; 2]>,
    mpp: f64,
    nucleus_pitch_px: u32,
    nuclei: u64,
    positive: u64,
    ki67_index_percent: f64,
    regions: &'a [RegionTruth],
}

/// Peak resident memory so far, from /proc (KiB), if readable.
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let (width, height) = parse_size(&args.size)?;
    let model = Model::new(args.seed, width, height);
    let levels = pyramid(width, height);
    // Deflate never grows a tile by more than a few hundred bytes, so the
    // raw size plus that bounds the file: past 4 GiB, BigTIFF.
    let bound: u64 = levels
        .iter()
        .map(|l| {
            let (tx, ty) = l.tiles(TILE);
            u64::from(tx) * u64::from(ty) * (u64::from(TILE * TILE) * BPP as u64 + 1024)
        })
        .sum();
    let big = args.bigtiff || bound > u64::from(u32::MAX) - (1 << 24);

    let truth = model::truth(&model);
    let nuclei: u64 = truth.iter().map(|r| r.nuclei).sum();
    let positive: u64 = truth.iter().map(|r| r.positive).sum();

    let partial = args.out.with_file_name(format!(
        "{}.partial",
        args.out
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let meta = SlideMeta {
        description: format!(
            "tresor synthetic Ki-67 slide; seed={}; {width}x{height}; mpp={MPP}",
            args.seed
        ),
        mpp: MPP,
    };
    let writer = SlideWriter::create(&partial, &levels, big, meta)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut pyr = Pyramid {
        writer,
        strips: levels
            .iter()
            .map(|&size| Strip {
                size,
                buf: vec![0; size.width as usize * TILE as usize * BPP],
                rows: 0,
                ty: 0,
            })
            .collect(),
        tile: vec![0; (TILE * TILE) as usize * BPP],
        pad: Model::glass(),
    };
    let (ntx, nty) = levels[0].tiles(TILE);
    let mut scratch = model::Scratch::default();
    let mut tile = vec![0u8; (TILE * TILE) as usize * BPP];
    for ty in 0..nty {
        let y0 = ty * TILE;
        let rows = (height - y0).min(TILE);
        for tx in 0..ntx {
            let x0 = tx * TILE;
            let cols = (width - x0).min(TILE);
            let n = (cols * rows) as usize * BPP;
            model.render(x0, y0, cols, rows, &mut tile[..n], &mut scratch);
            for r in 0..rows as usize {
                let src = r * cols as usize * BPP;
                let dst = (r * width as usize + x0 as usize) * BPP;
                pyr.strips[0].buf[dst..dst + cols as usize * BPP]
                    .copy_from_slice(&tile[src..src + cols as usize * BPP]);
            }
        }
        pyr.strips[0].rows = rows;
        pyr.emit(0)?;
    }
    let file = pyr.writer.finish()?;
    file.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .context("cannot sync the slide")?;
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("cannot rename to {}", args.out.display()))?;

    let t = Truth {
        generator: "tresor-slide 1",
        seed: args.seed,
        width,
        height,
        tile: TILE,
        levels: levels.iter().map(|l| [l.width, l.height]).collect(),
        mpp: MPP,
        nucleus_pitch_px: model::PITCH,
        nuclei,
        positive,
        ki67_index_percent: if nuclei == 0 {
            0.0
        } else {
            (positive as f64 * 10_000.0 / nuclei as f64).round() / 100.0
        },
        regions: &truth,
    };
    let tp = truth_path(&args.out);
    let mut json = serde_json::to_string_pretty(&t)?;
    json.push('\n');
    std::fs::write(&tp, json).with_context(|| format!("cannot write {}", tp.display()))?;

    let bytes = std::fs::metadata(&args.out)?.len();
    say(format_args!(
        "{}: {width}x{height}, {} levels, {} tiles of {TILE}x{TILE}, {}{} bytes; {} regions, {nuclei} nuclei, {positive} positive",
        args.out.display(),
        levels.len(),
        levels.iter().map(|l| { let (a, b) = l.tiles(TILE); u64::from(a) * u64::from(b) }).sum::<u64>(),
        if big { "BigTIFF, " } else { "" },
        bytes,
        truth.len(),
    ));
    say(format_args!("truth: {}", tp.display()));
    say(format_args!(
        "took {:.1} s; peak RSS {} KiB",
        started.elapsed().as_secs_f64(),
        peak_rss_kib().map_or("unknown".into(), |k| k.to_string())
    ));
    Ok(())
}

/// Prints a line; a closed stdout (`| head`) is not worth a panic.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tresor-slide: {e:#}");
            ExitCode::FAILURE
        }
    }
}
