//! Virtual slides (issue 8): the generator is deterministic and bounded in
//! memory, the Ki-67 analysis finds the ground truth within ±5 points, and
//! OpenSlide and libvips read a slide through a tresor mount exactly as
//! they read the original.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tresor::slide::SlideReader;

use crate::util::{fuse_available, ok, TestStore};

fn slide_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tresor-slide"))
}

/// Writes `dir/name` with the generator; returns the slide and its truth.
fn generate(dir: &Path, name: &str, seed: u64, size: &str, extra: &[&str]) -> (PathBuf, Value) {
    let out = dir.join(name);
    ok(slide_bin()
        .arg("--out")
        .arg(&out)
        .args(["--seed", &seed.to_string(), "--size", size])
        .args(extra));
    let stem = name.trim_end_matches(".tiff");
    let truth = std::fs::read(dir.join(format!("{stem}.truth.json"))).unwrap();
    (out, serde_json::from_slice(&truth).unwrap())
}

/// The external tools must be there; under CI=true their absence fails.
fn tools_available(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .collect();
    crate::util::require(
        missing.is_empty(),
        &format!("{missing:?} (apt-get install openslide-tools libvips-tools)"),
    )
}

/// A PNG's pixels as RGB (an alpha channel must be opaque).
fn png_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
    let px = &buf[..info.buffer_size()];
    let rgb = match info.color_type {
        png::ColorType::Rgb => px.to_vec(),
        png::ColorType::Rgba => px
            .chunks_exact(4)
            .flat_map(|p| {
                assert_eq!(p[3], 255, "{}: transparent pixel", path.display());
                [p[0], p[1], p[2]]
            })
            .collect(),
        c => panic!("{}: unexpected colour type {c:?}", path.display()),
    };
    (info.width, info.height, rgb)
}

#[test]
fn generator_is_deterministic_for_a_seed_and_bigtiff_holds_the_same_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ta) = generate(dir.path(), "a.tiff", 5, "2048x1536", &[]);
    let (b, tb) = generate(dir.path(), "b.tiff", 5, "2048x1536", &[]);
    let (c, tc) = generate(dir.path(), "c.tiff", 6, "2048x1536", &[]);
    let (big, tbig) = generate(dir.path(), "big.tiff", 5, "2048x1536", &["--bigtiff"]);
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "same seed, different slide bytes");
    assert_eq!(ta, tb);
    assert_ne!(bytes(&a), bytes(&c), "another seed, same slide");
    assert_ne!(ta, tc);
    assert_eq!(ta, tbig);
    assert_eq!(&bytes(&a)[..4], b"II*\0");
    assert_eq!(&bytes(&big)[..4], b"II+\0");

    // Same pixels at every level, tile by tile, classic and BigTIFF.
    let mut ra = SlideReader::open(&a).unwrap();
    let mut rb = SlideReader::open(&big).unwrap();
    assert_eq!(ra.levels().len(), 4);
    assert_eq!(ra.levels().len(), rb.levels().len());
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    for l in 0..ra.levels().len() {
        assert_eq!(ra.levels()[l].size, rb.levels()[l].size);
        let (nx, ny) = ra.levels()[l].tiles();
        for ty in 0..ny {
            for tx in 0..nx {
                ra.read_tile(l, tx, ty, &mut pa).unwrap();
                rb.read_tile(l, tx, ty, &mut pb).unwrap();
                assert!(pa == pb, "level {l} tile ({tx}, {ty}) differs");
            }
        }
    }
    // The truth is consistent: regions add up, indices are real fractions.
    let regions = ta["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 4);
    let sum: u64 = regions.iter().map(|r| r["nuclei"].as_u64().unwrap()).sum();
    assert_eq!(sum, ta["nuclei"].as_u64().unwrap());
    assert!(sum > 400, "too few nuclei: {sum}");
}

/// Runs the analysis; returns its summary and the bytes it wrote.
fn analyse(slide: &Path, out: &Path, cwd: &Path) -> (Value, Vec<u8>, Vec<u8>) {
    ok(Command::new(ki67())
        .arg(slide)
        .arg("--out")
        .arg(out)
        .current_dir(cwd));
    let summary = std::fs::read(out.join("summary.json")).unwrap();
    let heatmap = std::fs::read(out.join("heatmap.png")).unwrap();
    (serde_json::from_slice(&summary).unwrap(), summary, heatmap)
}

#[test]
fn ki67_index_is_within_5_points_of_the_truth_on_several_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut indices = Vec::new();
    for seed in [11u64, 12, 13] {
        let (slide, truth) = generate(dir.path(), &format!("s{seed}.tiff"), seed, "small", &[]);
        let (summary, sbytes, hbytes) =
            analyse(&slide, &dir.path().join(format!("out{seed}")), dir.path());

        assert_eq!(summary["width"], 4096);
        assert_eq!(summary["height"], 3072);
        assert_eq!(summary["tiles_read"]["level0"], 16 * 12);
        let found = summary["regions"].as_array().unwrap();
        let want = truth["regions"].as_array().unwrap();
        assert_eq!(found.len(), want.len(), "seed {seed}: regions {found:?}");
        for t in want {
            let (cx, cy) = (
                t["center"][0].as_f64().unwrap(),
                t["center"][1].as_f64().unwrap(),
            );
            let inside: Vec<&Value> = found
                .iter()
                .filter(|r| {
                    let b: Vec<f64> = r["bbox"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect();
                    b[0] <= cx && cx < b[2] && b[1] <= cy && cy < b[3]
                })
                .collect();
            assert_eq!(
                inside.len(),
                1,
                "seed {seed}: truth region {} matched {inside:?}",
                t["id"]
            );
            let r = inside[0];
            let (ti, ri) = (
                t["ki67_index_percent"].as_f64().unwrap(),
                r["ki67_index_percent"].as_f64().unwrap(),
            );
            eprintln!(
                "seed {seed} region {}: truth {ti:.2} %, analysis {ri:.2} %",
                t["id"]
            );
            assert!(
                (ti - ri).abs() <= 5.0,
                "seed {seed} region {}: truth {ti} %, analysis {ri} %",
                t["id"]
            );
            let (tn, rn) = (t["nuclei"].as_f64().unwrap(), r["nuclei"].as_f64().unwrap());
            assert!(
                (tn - rn).abs() <= 0.05 * tn,
                "seed {seed}: {rn} nuclei counted, {tn} there"
            );
            indices.push(ti);
        }
        let (to, so) = (
            truth["ki67_index_percent"].as_f64().unwrap(),
            summary["ki67_index_percent"].as_f64().unwrap(),
        );
        assert!(
            (to - so).abs() <= 5.0,
            "seed {seed} overall: truth {to}, analysis {so}"
        );

        // The heat map is a real image of the tile grid.
        let hp = dir.path().join(format!("out{seed}/heatmap.png"));
        let (w, h, px) = png_rgb(&hp);
        let cell = summary["heatmap"]["cell_px"].as_u64().unwrap() as u32;
        assert_eq!((w, h), (16 * cell, 12 * cell));
        assert!(
            px.chunks_exact(3)
                .any(|p| u16::from(p[0]) > u16::from(p[2]) + 60),
            "no red in the heat map"
        );
        assert!(
            px.chunks_exact(3)
                .any(|p| u16::from(p[2]) > u16::from(p[0]) + 60),
            "no blue in the heat map"
        );

        // Output depends on the slide alone: another directory, another
        // working directory, another file name: the same bytes.
        if seed == 11 {
            let other = dir.path().join("elsewhere");
            std::fs::create_dir_all(&other).unwrap();
            let renamed = other.join("renamed.tiff");
            std::fs::copy(&slide, &renamed).unwrap();
            let (_, s2, h2) = analyse(&renamed, &other.join("o"), &other);
            assert!(sbytes == s2, "summary.json differs between runs");
            assert!(hbytes == h2, "heatmap.png differs between runs");
        }
    }
    // The seeds cover a real spread of indices, so a constant answer fails.
    let (lo, hi) = indices
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(hi - lo > 30.0, "truth indices {indices:?} too alike");
}

#[test]
fn openslide_and_vips_read_the_slide_through_a_mount_unchanged() {
    if !fuse_available()
        || !tools_available(&[
            "openslide-show-properties",
            "openslide-write-png",
            "vips",
            "vipsheader",
        ])
    {
        return;
    }
    let ts = TestStore::new(&["pathology"]);
    let src = ts.subdir("src");
    let (classic, _) = generate(&src, "slide.tiff", 21, "3072x2048", &[]);
    let (big, _) = generate(&src, "big.tiff", 21, "3072x2048", &["--bigtiff"]);
    let m = ts.mount();
    let out = ts.subdir("out");
    for orig in [&classic, &big] {
        let name = orig.file_name().unwrap().to_str().unwrap();
        let mounted = m.path(&format!("pathology/{name}"));
        ok(Command::new("cp").arg(orig).arg(&mounted));
        assert!(std::fs::read(orig).unwrap() == std::fs::read(&mounted).unwrap());

        let props = |p: &Path| {
            String::from_utf8(ok(Command::new("openslide-show-properties").arg(p)).stdout).unwrap()
        };
        let (po, pm) = (props(orig), props(&mounted));
        assert_eq!(po, pm, "properties differ through the mount");
        assert!(po.contains("openslide.vendor: 'generic-tiff'"), "{po}");
        assert!(po.contains("openslide.level-count: '5'"), "{po}");
        assert!(po.contains("openslide.level[4].downsample: '16'"), "{po}");

        let mut reader = SlideReader::open(orig).unwrap();
        // (level, x, y, w, h) in the level's own pixels: across tile
        // borders, a whole level, and the edge tiles with their padding cut.
        let regions = [
            (0u32, 1000u32, 700u32, 600u32, 400u32),
            (0, 2800, 1800, 272, 248),
            (1, 0, 0, 1536, 1024),
            (2, 300, 100, 468, 412),
            (4, 0, 0, 192, 128),
        ];
        for (i, &(l, x, y, w, h)) in regions.iter().enumerate() {
            let ours = reader.read_region(l as usize, x, y, w, h).unwrap();
            let ds = 1u32 << l;
            for (tool, p) in [("orig", orig.as_path()), ("mount", mounted.as_path())] {
                let png = out.join(format!("{name}-os-{i}-{tool}.png"));
                ok(Command::new("openslide-write-png")
                    .arg(p)
                    .args([(x * ds).to_string(), (y * ds).to_string(), l.to_string()])
                    .args([w.to_string(), h.to_string()])
                    .arg(&png));
                let (pw, ph, px) = png_rgb(&png);
                assert_eq!((pw, ph), (w, h));
                assert!(
                    px == ours,
                    "openslide ({tool}) {name} region {i} differs from the pixels written"
                );

                let png = out.join(format!("{name}-vips-{i}-{tool}.png"));
                ok(Command::new("vips")
                    .arg("crop")
                    .arg(format!("{}[page={l}]", p.display()))
                    .arg(&png)
                    .args([x, y, w, h].map(|v| v.to_string())));
                let (pw, ph, px) = png_rgb(&png);
                assert_eq!((pw, ph), (w, h));
                assert!(
                    px == ours,
                    "vips ({tool}) {name} region {i} differs from the pixels written"
                );
            }
        }
        let header = |p: &Path| {
            String::from_utf8(
                ok(Command::new("vipsheader").arg(format!("{}[page=1]", p.display()))).stdout,
            )
            .unwrap()
        };
        assert!(
            header(&mounted).contains("1536x1024"),
            "{}",
            header(&mounted)
        );
    }
    m.unmount();
}

#[test]
fn generator_memory_does_not_grow_with_the_slide_height() {
    let dir = tempfile::tempdir().unwrap();
    let peak = |size: &str| -> u64 {
        let o = ok(slide_bin()
            .arg("--out")
            .arg(dir.path().join(format!("{size}.tiff")))
            .args(["--size", size]));
        let text = String::from_utf8(o.stdout).unwrap();
        let kib = text
            .split("peak RSS ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok());
        kib.unwrap_or_else(|| panic!("no peak RSS in {text:?}"))
    };
    let short = peak("1024x1024");
    // 16 times the rows: 48 MiB of raw pixels (64 with the pyramid).
    let tall = peak("1024x16384");
    eprintln!("peak RSS: 1024x1024 {short} KiB, 1024x16384 {tall} KiB");
    assert!(
        tall < short + 12 * 1024,
        "peak RSS grew from {short} to {tall} KiB"
    );
}

#[test]
fn bad_input_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.tiff");
    std::fs::write(&junk, "not a slide at all").unwrap();
    let o = Command::new(ki67())
        .arg(&junk)
        .arg("--out")
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot read") && err.contains("TIFF"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let o = Command::new(ki67()).arg(&junk).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("usage"));

    // A truncated slide: the header promises tiles that are not there.
    let (slide, _) = generate(dir.path(), "t.tiff", 1, "1024x1024", &[]);
    let bytes = std::fs::read(&slide).unwrap();
    std::fs::write(&slide, &bytes[..bytes.len() / 2]).unwrap();
    let o = Command::new(ki67())
        .arg(&slide)
        .arg("--out")
        .arg(dir.path().join("o2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    for size in ["10x10", "huge", "4096x", "99999999x1024"] {
        let o = slide_bin()
            .arg("--out")
            .arg(dir.path().join("x.tiff"))
            .args(["--size", size])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("--size"),
            "{size}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.path().join("x.tiff").exists());
}

/// The product's path: the slide in a mounted data group, the analysis
/// profiled once and run confined (`--data` the mounted slide's folder,
/// `--out` inside the mounted group). Its summary and heat map are
/// byte-identical to the unconfined analysis of the plaintext original.
#[test]
fn ki67_confined_through_the_mount_matches_the_unconfined_run() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["pathology"]);
    let src = ts.subdir("src");
    let (plain, _) = generate(&src, "slide.tiff", 7, "2048x1536", &[]);
    let free = ts.subdir("free");
    let (_, summary, heatmap) = analyse(&plain, &free, &src);

    let m = ts.mount();
    let case = m.path("pathology/S-7");
    let results = m.path("pathology/S-7/ki67");
    std::fs::create_dir_all(&results).unwrap();
    let slide = case.join("slide.tiff");
    std::fs::copy(&plain, &slide).unwrap();
    let profile = ts.dir.path().join("ki67.json");
    let scratch = ts.subdir("profiling");
    ok(crate::util::tresor()
        .args(["profile", "--out"])
        .arg(&profile)
        .arg("--data")
        .arg(&case)
        .arg("--writable")
        .arg(&scratch)
        .arg("--")
        .arg(ki67())
        .arg(&slide)
        .arg("--out")
        .arg(&scratch));
    let run = crate::util::tresor()
        .args(["run", "--profile"])
        .arg(&profile)
        .arg("--data")
        .arg(&case)
        .arg("--out")
        .arg(&results)
        .arg("--")
        .arg(ki67())
        .arg(&slide)
        .arg("--out")
        .arg(&results)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "confined ki67 failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read(results.join("summary.json")).unwrap(),
        summary
    );
    assert_eq!(std::fs::read(results.join("heatmap.png")).unwrap(), heatmap);
    // Written encrypted: the summary's text is nowhere in the store.
    let store = crate::util::all_store_bytes(&ts.store);
    assert!(!store
        .windows(b"ki67_index_percent".len())
        .any(|w| w == b"ki67_index_percent"));
    m.unmount();
}

/// The Ki-67 analysis, a binary of the package (tools/ki67).
fn ki67() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_tresor-ki67"))
}
