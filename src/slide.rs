//! Virtual slides as pyramidal, tiled TIFF: a streaming tile writer and a
//! tile reader, shared by the slide generator (`tresor-slide`) and the Ki-67
//! example analysis. Self-contained: no FUSE, no keys.
//!
//! The layout written (see docs/SLIDES.md) is what OpenSlide calls a
//! "generic tiled TIFF": one tiled IFD per pyramid level, largest first,
//! chained as successive directories; RGB, 8 bits a sample, chunky;
//! 256 × 256 tiles, zlib/deflate-compressed (Compression=8) with horizontal
//! differencing (Predictor=2). Classic TIFF, or BigTIFF for files past 4 GiB.
//! No timestamps, so a slide's bytes depend on its pixels alone.
//!
//! The reader accepts that layout (and uncompressed tiles), either byte
//! order, classic or BigTIFF; anything else is a clear [`SlideError`].

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use flate2::write::ZlibEncoder;

/// Edge of the square tiles the writer produces.
pub const TILE: u32 = 256;

/// Bytes per pixel (RGB, 8 bits a sample).
pub const BPP: usize = 3;

/// Reading or writing a slide failed.
#[derive(Debug, thiserror::Error)]
pub enum SlideError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a readable tiled TIFF: {0}")]
    Format(String),
    #[error("unsupported TIFF: {0}")]
    Unsupported(String),
    #[error("slide too large for classic TIFF (past 4 GiB): write BigTIFF instead")]
    TooLargeForClassic,
    #[error("slide writer misuse: {0}")]
    Usage(String),
}

/// Size of one pyramid level in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelSize {
    pub width: u32,
    pub height: u32,
}

impl LevelSize {
    /// Tiles across and down for a tile edge of `tile`.
    pub fn tiles(&self, tile: u32) -> (u32, u32) {
        (self.width.div_ceil(tile), self.height.div_ceil(tile))
    }
}

/// Level sizes of a pyramid halving `width × height` until a level fits in
/// one tile.
pub fn pyramid(width: u32, height: u32) -> Vec<LevelSize> {
    let mut levels = vec![LevelSize { width, height }];
    let (mut w, mut h) = (width, height);
    while w > TILE || h > TILE {
        w = w.div_ceil(2);
        h = h.div_ceil(2);
        levels.push(LevelSize {
            width: w,
            height: h,
        });
    }
    levels
}

/// Metadata stored in the first IFD.
#[derive(Debug, Clone)]
pub struct SlideMeta {
    /// ImageDescription (OpenSlide shows it as `openslide.comment`).
    pub description: String,
    /// Microns per pixel at level 0 (stored as X/YResolution in pixels/cm).
    pub mpp: f64,
}

// TIFF field types.
const SHORT: u16 = 3;
const LONG: u16 = 4;
const ASCII: u16 = 2;
const RATIONAL: u16 = 5;
const LONG8: u16 = 16;

struct LevelTiles {
    size: LevelSize,
    offsets: Vec<u64>,
    counts: Vec<u64>,
}

/// Writes a pyramidal tiled TIFF tile by tile: tiles go out as they come
/// (any level, any order), the directories at [`SlideWriter::finish`]. Only
/// the tile offset tables stay in memory.
pub struct SlideWriter<W: Write + Seek> {
    out: W,
    big: bool,
    pos: u64,
    levels: Vec<LevelTiles>,
    meta: SlideMeta,
    scratch: Vec<u8>,
}

impl SlideWriter<io::BufWriter<File>> {
    /// Creates `path` (truncating it).
    pub fn create(
        path: &Path,
        levels: &[LevelSize],
        big: bool,
        meta: SlideMeta,
    ) -> Result<Self, SlideError> {
        let f = File::create(path)?;
        SlideWriter::new(io::BufWriter::with_capacity(1 << 20, f), levels, big, meta)
    }
}

impl<W: Write + Seek> SlideWriter<W> {
    /// Starts a slide with the given levels (largest first) on `out`.
    pub fn new(
        mut out: W,
        levels: &[LevelSize],
        big: bool,
        meta: SlideMeta,
    ) -> Result<Self, SlideError> {
        if levels.is_empty() || levels.iter().any(|l| l.width == 0 || l.height == 0) {
            return Err(SlideError::Usage("empty level".into()));
        }
        // Header; the first IFD's offset is patched in by finish().
        let header: Vec<u8> = if big {
            let mut h = b"II".to_vec();
            h.extend(43u16.to_le_bytes());
            h.extend(8u16.to_le_bytes());
            h.extend(0u16.to_le_bytes());
            h.extend(0u64.to_le_bytes());
            h
        } else {
            let mut h = b"II".to_vec();
            h.extend(42u16.to_le_bytes());
            h.extend(0u32.to_le_bytes());
            h
        };
        out.write_all(&header)?;
        let levels = levels
            .iter()
            .map(|&size| {
                let (tx, ty) = size.tiles(TILE);
                let n = tx as usize * ty as usize;
                LevelTiles {
                    size,
                    offsets: vec![0; n],
                    counts: vec![0; n],
                }
            })
            .collect();
        Ok(SlideWriter {
            out,
            big,
            pos: header.len() as u64,
            levels,
            meta,
            scratch: Vec::new(),
        })
    }

    /// Compresses and appends one tile: `rgb` is TILE × TILE pixels, RGB,
    /// rows top to bottom (edge tiles padded by the caller).
    pub fn write_tile(
        &mut self,
        level: usize,
        tx: u32,
        ty: u32,
        rgb: &[u8],
    ) -> Result<(), SlideError> {
        let row = TILE as usize * BPP;
        if rgb.len() != row * TILE as usize {
            return Err(SlideError::Usage("tile buffer of the wrong size".into()));
        }
        let lv = self
            .levels
            .get(level)
            .ok_or_else(|| SlideError::Usage(format!("no level {level}")))?;
        let (ntx, nty) = lv.size.tiles(TILE);
        if tx >= ntx || ty >= nty {
            return Err(SlideError::Usage(format!(
                "tile ({tx}, {ty}) outside level {level}"
            )));
        }
        // Predictor 2: each sample minus its left neighbour's, per row.
        self.scratch.clear();
        self.scratch.extend_from_slice(rgb);
        for r in self.scratch.chunks_exact_mut(row) {
            for i in (BPP..row).rev() {
                r[i] = r[i].wrapping_sub(r[i - BPP]);
            }
        }
        let mut enc = ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&self.scratch)?;
        let data = enc.finish()?;
        if !self.big && self.pos + data.len() as u64 > u32::MAX as u64 {
            return Err(SlideError::TooLargeForClassic);
        }
        let i = ty as usize * ntx as usize + tx as usize;
        self.out.write_all(&data)?;
        let lv = &mut self.levels[level];
        lv.offsets[i] = self.pos;
        lv.counts[i] = data.len() as u64;
        self.pos += data.len() as u64;
        // Keep the next write word-aligned, as TIFF readers prefer.
        if self.pos % 2 == 1 {
            self.out.write_all(&[0])?;
            self.pos += 1;
        }
        Ok(())
    }

    /// Writes the directories (level 0 first), links them, and flushes.
    /// Fails if any tile was never written.
    pub fn finish(mut self) -> Result<W, SlideError> {
        for (l, lv) in self.levels.iter().enumerate() {
            if lv.counts.contains(&0) {
                return Err(SlideError::Usage(format!("level {l} has unwritten tiles")));
            }
        }
        let mut first = None;
        let mut prev_link: Option<u64> = None;
        for l in 0..self.levels.len() {
            let (ifd_at, link_at) = self.write_ifd(l)?;
            match prev_link {
                None => first = Some(ifd_at),
                Some(at) => self.patch_offset(at, ifd_at)?,
            }
            prev_link = Some(link_at);
        }
        let first = first.ok_or_else(|| SlideError::Usage("no levels".into()))?;
        self.patch_offset(if self.big { 8 } else { 4 }, first)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn patch_offset(&mut self, at: u64, value: u64) -> Result<(), SlideError> {
        self.out.seek(SeekFrom::Start(at))?;
        if self.big {
            self.out.write_all(&value.to_le_bytes())?;
        } else {
            let v = u32::try_from(value).map_err(|_| SlideError::TooLargeForClassic)?;
            self.out.write_all(&v.to_le_bytes())?;
        }
        self.out.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }

    /// Appends level `l`'s IFD and its out-of-line values; returns the IFD's
    /// offset and where its next-IFD link lives.
    fn write_ifd(&mut self, l: usize) -> Result<(u64, u64), SlideError> {
        let big = self.big;
        let lv = &self.levels[l];
        let u16s = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let u32s = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        // (tag, type, count, value bytes), ascending by tag as TIFF requires.
        let mut e: Vec<(u16, u16, u64, Vec<u8>)> = vec![
            (254, LONG, 1, u32s(&[u32::from(l > 0)])),
            (256, LONG, 1, u32s(&[lv.size.width])),
            (257, LONG, 1, u32s(&[lv.size.height])),
            (258, SHORT, 3, u16s(&[8, 8, 8])),
            (259, SHORT, 1, u16s(&[8])),
            (262, SHORT, 1, u16s(&[2])),
        ];
        if l == 0 {
            let mut d = self.meta.description.clone().into_bytes();
            d.retain(|&b| b != 0);
            d.push(0);
            e.push((270, ASCII, d.len() as u64, d));
        }
        e.push((277, SHORT, 1, u16s(&[3])));
        // Pixels per centimetre at this level (each level halves).
        let ppcm = 10_000.0 / (self.meta.mpp * f64::from(1u32 << l.min(31)));
        let rational = u32s(&[(ppcm * 1000.0).round().max(1.0) as u32, 1000]);
        e.push((282, RATIONAL, 1, rational.clone()));
        e.push((283, RATIONAL, 1, rational));
        e.push((284, SHORT, 1, u16s(&[1])));
        e.push((296, SHORT, 1, u16s(&[3])));
        e.push((305, ASCII, 13, b"tresor-slide\0".to_vec()));
        e.push((317, SHORT, 1, u16s(&[2])));
        e.push((322, LONG, 1, u32s(&[TILE])));
        e.push((323, LONG, 1, u32s(&[TILE])));
        let n = lv.offsets.len() as u64;
        let table = |v: &[u64]| -> Result<Vec<u8>, SlideError> {
            if big {
                Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
            } else {
                let mut b = Vec::with_capacity(v.len() * 4);
                for &x in v {
                    let x = u32::try_from(x).map_err(|_| SlideError::TooLargeForClassic)?;
                    b.extend(x.to_le_bytes());
                }
                Ok(b)
            }
        };
        let ty = if big { LONG8 } else { LONG };
        e.push((324, ty, n, table(&lv.offsets)?));
        e.push((325, ty, n, table(&lv.counts)?));

        let (count_len, entry_len, link_len, inline) = if big {
            (8u64, 20u64, 8u64, 8usize)
        } else {
            (2, 12, 4, 4)
        };
        let ifd_at = self.pos;
        let ifd_len = count_len + entry_len * e.len() as u64 + link_len;
        let mut extra_at = ifd_at + ifd_len;
        let mut ifd = Vec::with_capacity(ifd_len as usize);
        let mut extra = Vec::new();
        if big {
            ifd.extend((e.len() as u64).to_le_bytes());
        } else {
            ifd.extend((e.len() as u16).to_le_bytes());
        }
        for (tag, typ, count, bytes) in &e {
            ifd.extend(tag.to_le_bytes());
            ifd.extend(typ.to_le_bytes());
            if big {
                ifd.extend(count.to_le_bytes());
            } else {
                let c = u32::try_from(*count).map_err(|_| SlideError::TooLargeForClassic)?;
                ifd.extend(c.to_le_bytes());
            }
            if bytes.len() <= inline {
                let mut v = bytes.clone();
                v.resize(inline, 0);
                ifd.extend(v);
            } else {
                if big {
                    ifd.extend(extra_at.to_le_bytes());
                } else {
                    let at = u32::try_from(extra_at).map_err(|_| SlideError::TooLargeForClassic)?;
                    ifd.extend(at.to_le_bytes());
                }
                extra.extend_from_slice(bytes);
                if bytes.len() % 2 == 1 {
                    extra.push(0);
                }
                extra_at += bytes.len().next_multiple_of(2) as u64;
            }
        }
        let link_at = self.pos + ifd.len() as u64;
        ifd.extend(vec![0u8; link_len as usize]);
        if !big && extra_at > u32::MAX as u64 {
            return Err(SlideError::TooLargeForClassic);
        }
        self.out.write_all(&ifd)?;
        self.out.write_all(&extra)?;
        self.pos = extra_at;
        Ok((ifd_at, link_at))
    }
}

/// One tiled RGB level as found in the file.
#[derive(Debug, Clone)]
pub struct Level {
    pub size: LevelSize,
    pub tile_width: u32,
    pub tile_height: u32,
    compression: u16,
    predictor: u16,
    offsets: Vec<u64>,
    counts: Vec<u64>,
}

impl Level {
    /// Tiles across and down.
    pub fn tiles(&self) -> (u32, u32) {
        (
            self.size.width.div_ceil(self.tile_width),
            self.size.height.div_ceil(self.tile_height),
        )
    }
}

/// Reads tiles of a tiled RGB TIFF, one at a time, with plain file reads.
pub struct SlideReader {
    file: File,
    file_len: u64,
    levels: Vec<Level>,
    raw: Vec<u8>,
}

// Limits that keep hostile files from asking for absurd allocations.
const MAX_TILE_EDGE: u32 = 4096;
const MAX_IFDS: usize = 64;
const MAX_TILES: u64 = 1 << 26;

struct Parser<'a> {
    file: &'a mut File,
    le: bool,
    big: bool,
    len: u64,
}

impl Parser<'_> {
    fn read_at(&mut self, at: u64, n: usize) -> Result<Vec<u8>, SlideError> {
        if at.checked_add(n as u64).is_none_or(|end| end > self.len) {
            return Err(SlideError::Format(format!(
                "data at offset {at} runs past the end of the file"
            )));
        }
        self.file.seek(SeekFrom::Start(at))?;
        let mut b = vec![0; n];
        self.file.read_exact(&mut b)?;
        Ok(b)
    }

    fn uint(&self, b: &[u8]) -> u64 {
        let mut v = 0u64;
        if self.le {
            for (i, x) in b.iter().enumerate() {
                v |= u64::from(*x) << (8 * i);
            }
        } else {
            for x in b {
                v = (v << 8) | u64::from(*x);
            }
        }
        v
    }

    /// Values of one IFD entry as integers (SHORT, LONG, LONG8 only).
    fn values(&mut self, entry: &[u8]) -> Result<(u16, Vec<u64>), SlideError> {
        let tag = self.uint(&entry[0..2]) as u16;
        let typ = self.uint(&entry[2..4]) as u16;
        let (count, val) = if self.big {
            (self.uint(&entry[4..12]), &entry[12..20])
        } else {
            (self.uint(&entry[4..8]), &entry[8..12])
        };
        let size = match typ {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16 | 17 | 18 => 8,
            _ => return Ok((tag, Vec::new())),
        };
        if !matches!(typ, 3 | 4 | 16) {
            return Ok((tag, Vec::new()));
        }
        if count > MAX_TILES {
            return Err(SlideError::Format(format!("tag {tag} has {count} values")));
        }
        let total = count as usize * size;
        let bytes = if total <= val.len() {
            val[..total].to_vec()
        } else {
            let at = self.uint(val);
            self.read_at(at, total)?
        };
        Ok((
            tag,
            bytes.chunks_exact(size).map(|c| self.uint(c)).collect(),
        ))
    }
}

impl SlideReader {
    /// Opens a slide and reads its directory of tiled levels.
    pub fn open(path: &Path) -> Result<SlideReader, SlideError> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut head = [0u8; 16];
        let n = file.read(&mut head)?;
        if n < 8 {
            return Err(SlideError::Format("file shorter than a TIFF header".into()));
        }
        let le = match &head[0..2] {
            b"II" => true,
            b"MM" => false,
            _ => return Err(SlideError::Format("no TIFF byte-order mark".into())),
        };
        let mut p = Parser {
            file: &mut file,
            le,
            big: false,
            len,
        };
        let magic = p.uint(&head[2..4]);
        let mut next = match magic {
            42 => p.uint(&head[4..8]),
            43 if n >= 16 => {
                p.big = true;
                p.uint(&head[8..16])
            }
            _ => return Err(SlideError::Format(format!("bad TIFF magic {magic}"))),
        };
        let mut levels = Vec::new();
        let mut seen = 0;
        while next != 0 {
            seen += 1;
            if seen > MAX_IFDS {
                return Err(SlideError::Format("too many directories (a loop?)".into()));
            }
            let (count_len, entry_len, link_len) = if p.big { (8, 20, 8) } else { (2, 12, 4) };
            let count_bytes = p.read_at(next, count_len)?;
            let count = p.uint(&count_bytes);
            if count > 4096 {
                return Err(SlideError::Format(format!(
                    "directory with {count} entries"
                )));
            }
            let body = p.read_at(
                next + count_len as u64,
                count as usize * entry_len + link_len,
            )?;
            let mut tags = std::collections::BTreeMap::new();
            for entry in body[..count as usize * entry_len].chunks_exact(entry_len) {
                let (tag, vals) = p.values(entry)?;
                tags.insert(tag, vals);
            }
            next = p.uint(&body[count as usize * entry_len..]);
            if let Some(level) = Self::level(&tags)? {
                levels.push(level);
            }
        }
        if levels.is_empty() {
            return Err(SlideError::Unsupported(
                "no tiled directory: the slide must be a tiled TIFF".into(),
            ));
        }
        Ok(SlideReader {
            file,
            file_len: len,
            levels,
            raw: Vec::new(),
        })
    }

    /// A tiled directory as a level; `None` for untiled ones (e.g. a label).
    fn level(
        tags: &std::collections::BTreeMap<u16, Vec<u64>>,
    ) -> Result<Option<Level>, SlideError> {
        let one = |t: u16, default: Option<u64>| -> Result<u64, SlideError> {
            match tags.get(&t).and_then(|v| v.first()) {
                Some(&v) => Ok(v),
                None => default.ok_or_else(|| SlideError::Format(format!("tag {t} missing"))),
            }
        };
        if !tags.contains_key(&322) {
            return Ok(None);
        }
        let width = one(256, None)?;
        let height = one(257, None)?;
        let tw = one(322, None)?;
        let th = one(323, None)?;
        let compression = one(259, Some(1))?;
        let photometric = one(262, None)?;
        let spp = one(277, Some(1))?;
        let planar = one(284, Some(1))?;
        let predictor = one(317, Some(1))?;
        let bits = tags.get(&258).cloned().unwrap_or_else(|| vec![1]);
        if photometric != 2 || spp != 3 || planar != 1 || bits.iter().any(|&b| b != 8) {
            return Err(SlideError::Unsupported(
                "only 8-bit RGB, chunky (PlanarConfiguration=1) tiles are read".into(),
            ));
        }
        if !matches!(compression, 1 | 8 | 32946) {
            return Err(SlideError::Unsupported(format!(
                "compression {compression}: only uncompressed or deflate tiles are read \
                 (convert with e.g. `vips tiffsave IN OUT --tile --pyramid --compression deflate`)"
            )));
        }
        if !matches!(predictor, 1 | 2) {
            return Err(SlideError::Unsupported(format!("predictor {predictor}")));
        }
        if width == 0
            || height == 0
            || width > u32::MAX as u64
            || height > u32::MAX as u64
            || tw == 0
            || th == 0
            || tw > MAX_TILE_EDGE as u64
            || th > MAX_TILE_EDGE as u64
        {
            return Err(SlideError::Format(format!(
                "implausible size {width}×{height} with tiles {tw}×{th}"
            )));
        }
        let size = LevelSize {
            width: width as u32,
            height: height as u32,
        };
        let n = width.div_ceil(tw) * height.div_ceil(th);
        let offsets = tags.get(&324).cloned().unwrap_or_default();
        let counts = tags.get(&325).cloned().unwrap_or_default();
        if offsets.len() as u64 != n || counts.len() as u64 != n {
            return Err(SlideError::Format(format!(
                "{} tile offsets and {} byte counts for {n} tiles",
                offsets.len(),
                counts.len()
            )));
        }
        Ok(Some(Level {
            size,
            tile_width: tw as u32,
            tile_height: th as u32,
            compression: compression as u16,
            predictor: predictor as u16,
            offsets,
            counts,
        }))
    }

    /// The tiled levels, in file order (largest first for slides).
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Decodes tile (`tx`, `ty`) of `level` into `out` (tile_width ×
    /// tile_height RGB pixels, edge tiles including their padding).
    pub fn read_tile(
        &mut self,
        level: usize,
        tx: u32,
        ty: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), SlideError> {
        let lv = self
            .levels
            .get(level)
            .ok_or_else(|| SlideError::Usage(format!("no level {level}")))?;
        let (ntx, nty) = lv.tiles();
        if tx >= ntx || ty >= nty {
            return Err(SlideError::Usage(format!(
                "tile ({tx}, {ty}) outside level {level}"
            )));
        }
        let i = ty as usize * ntx as usize + tx as usize;
        let (at, n) = (lv.offsets[i], lv.counts[i]);
        let want = lv.tile_width as usize * lv.tile_height as usize * BPP;
        if at.checked_add(n).is_none_or(|end| end > self.file_len) || n > (want as u64) * 2 + 4096 {
            return Err(SlideError::Format(format!(
                "tile ({tx}, {ty}) of level {level} lies outside the file"
            )));
        }
        self.raw.resize(n as usize, 0);
        self.file.seek(SeekFrom::Start(at))?;
        self.file.read_exact(&mut self.raw)?;
        out.clear();
        match lv.compression {
            1 => out.extend_from_slice(&self.raw),
            _ => {
                let mut dec = flate2::read::ZlibDecoder::new(&self.raw[..]).take(want as u64 + 1);
                dec.read_to_end(out).map_err(|e| {
                    SlideError::Format(format!("tile ({tx}, {ty}) of level {level}: {e}"))
                })?;
            }
        }
        if out.len() != want {
            return Err(SlideError::Format(format!(
                "tile ({tx}, {ty}) of level {level} holds {} bytes, not {want}",
                out.len()
            )));
        }
        if lv.predictor == 2 {
            let row = lv.tile_width as usize * BPP;
            for r in out.chunks_exact_mut(row) {
                for i in BPP..row {
                    r[i] = r[i].wrapping_add(r[i - BPP]);
                }
            }
        }
        Ok(())
    }

    /// Reads the rectangle (`x`, `y`, `w`, `h`) of `level` as RGB rows;
    /// for tests and thumbnails (memory grows with the rectangle).
    pub fn read_region(
        &mut self,
        level: usize,
        x: u32,
        y: u32,
        w: u32,
        h: u32,
    ) -> Result<Vec<u8>, SlideError> {
        let lv = self
            .levels
            .get(level)
            .ok_or_else(|| SlideError::Usage(format!("no level {level}")))?
            .clone();
        if x as u64 + w as u64 > lv.size.width as u64 || y as u64 + h as u64 > lv.size.height as u64
        {
            return Err(SlideError::Usage("region outside the level".into()));
        }
        let mut out = vec![0u8; w as usize * h as usize * BPP];
        let mut tile = Vec::new();
        if w == 0 || h == 0 {
            return Ok(out);
        }
        let (tw, th) = (lv.tile_width, lv.tile_height);
        for ty in y / th..=(y + h - 1) / th {
            for tx in x / tw..=(x + w - 1) / tw {
                self.read_tile(level, tx, ty, &mut tile)?;
                let x0 = (tx * tw).max(x);
                let x1 = ((tx + 1) * tw).min(x + w);
                for yy in (ty * th).max(y)..((ty + 1) * th).min(y + h) {
                    let src = ((yy - ty * th) * tw + (x0 - tx * tw)) as usize * BPP;
                    let dst = ((yy - y) * w + (x0 - x)) as usize * BPP;
                    let n = (x1 - x0) as usize * BPP;
                    out[dst..dst + n].copy_from_slice(&tile[src..src + n]);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile_of(seed: u8) -> Vec<u8> {
        (0..TILE * TILE * 3)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(i as u8 >> 3))
            .collect()
    }

    fn roundtrip(big: bool) {
        let levels = pyramid(600, 300);
        assert_eq!(levels.len(), 3);
        let mut w = SlideWriter::new(
            io::Cursor::new(Vec::new()),
            &levels,
            big,
            SlideMeta {
                description: "test".into(),
                mpp: 0.5,
            },
        )
        .unwrap();
        let mut expect = Vec::new();
        for (l, size) in levels.iter().enumerate() {
            let (nx, ny) = size.tiles(TILE);
            for ty in 0..ny {
                for tx in 0..nx {
                    let t = tile_of((l as u32 * 31 + ty * 7 + tx) as u8 | 1);
                    w.write_tile(l, tx, ty, &t).unwrap();
                    expect.push((l, tx, ty, t));
                }
            }
        }
        let bytes = w.finish().unwrap().into_inner();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.tiff");
        std::fs::write(&p, &bytes).unwrap();
        let mut r = SlideReader::open(&p).unwrap();
        assert_eq!(r.levels().len(), 3);
        assert_eq!(r.levels()[1].size, levels[1]);
        let mut got = Vec::new();
        for (l, tx, ty, t) in expect {
            r.read_tile(l, tx, ty, &mut got).unwrap();
            assert_eq!(got, t);
        }
    }

    #[test]
    fn classic_and_bigtiff_roundtrip() {
        roundtrip(false);
        roundtrip(true);
    }

    #[test]
    fn missing_tiles_and_garbage_are_errors() {
        let levels = pyramid(300, 100);
        let meta = SlideMeta {
            description: String::new(),
            mpp: 0.5,
        };
        let w = SlideWriter::new(io::Cursor::new(Vec::new()), &levels, false, meta).unwrap();
        assert!(matches!(w.finish(), Err(SlideError::Usage(_))));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tiff");
        for junk in [
            &b""[..],
            b"II*\0\xff\xff\xff\xff",
            b"hello world, not a tiff",
        ] {
            std::fs::write(&p, junk).unwrap();
            assert!(SlideReader::open(&p).is_err());
        }
    }
}
