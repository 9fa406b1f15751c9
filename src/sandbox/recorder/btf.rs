//! A minimal kernel BTF for the recorder's CO-RE relocations.
//!
//! libbpf relocates the recorder's field accesses against the running
//! kernel's BTF. Given the whole of it (/sys/kernel/btf/vmlinux, 5–6 MB,
//! 100,000+ types) it parses every type and searches all of them for each
//! structure the programs touch: about 20 ms of a 50 ms start-up. This
//! module reads the kernel's BTF once, in one pass, and writes a BTF that
//! holds only those structures with only the fields read — each at the
//! kernel's offset, with a type of the kernel's kind and size — which
//! libbpf then takes as its `btf_custom_path`. The relocations it computes
//! are the same; if a field is missing here, loading fails and the caller
//! falls back to the full BTF (bpf.rs).

use std::collections::{BTreeMap, HashMap};

/// The fields the programs of profile.bpf.c read, by the structure they
/// start from (keep in step with its `BPF_CORE_READ`s and
/// `bpf_core_field_offset`s).
pub const FIELDS: &[(&str, &[&str])] = &[
    #[cfg(target_arch = "x86_64")]
    (
        "task_struct",
        &["thread_info.status", "pid", "tgid", "fs", "files", "signal"],
    ),
    #[cfg(not(target_arch = "x86_64"))]
    ("task_struct", &["pid", "tgid", "fs", "files", "signal"]),
    (
        "fs_struct",
        &["root.mnt", "root.dentry", "pwd.mnt", "pwd.dentry"],
    ),
    ("files_struct", &["fdt"]),
    ("fdtable", &["max_fds", "fd"]),
    ("file", &["f_path.mnt", "f_path.dentry"]),
    ("signal_struct", &["live.counter"]),
    ("linux_binprm", &["filename"]),
    ("dentry", &["d_parent", "d_name.name"]),
    ("vfsmount", &["mnt_root"]),
    ("mount", &["mnt_parent", "mnt_mountpoint", "mnt"]),
    #[cfg(target_arch = "x86_64")]
    ("pt_regs", &["di", "si", "dx", "r10", "r8", "r9"]),
    #[cfg(target_arch = "aarch64")]
    ("pt_regs", &["user_regs.regs", "orig_x0"]),
];

const MAGIC: u16 = 0xeb9f;
const HDR_LEN: usize = 24;

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// Why no minimal BTF could be made (the caller then uses the full one).
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// A parsed BTF: the type and string sections and where each type starts.
struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Offset of type `id` in `types` (index 0: void, unused).
    at: Vec<u32>,
    /// The structures named in `parse`'s `wanted`, in id order: (id, index
    /// into `wanted`). Found during the one walk over the types, while
    /// their headers are in the cache (a second walk took as long again).
    structs: Vec<(u32, usize)>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    fn parse(raw: &'a [u8], wanted: &[&[u8]]) -> Result<Btf<'a>, Error> {
        let magic = raw
            .get(..2)
            .map(|m| u16::from_ne_bytes([m[0], m[1]]))
            .ok_or_else(|| err("the kernel BTF is empty"))?;
        if magic != MAGIC {
            return Err(err("the kernel BTF has another byte order or no BTF magic"));
        }
        let field = |at| u32_at(raw, at).map(|v| v as usize);
        let bad = || err("the kernel BTF header is cut short");
        let hdr = field(4).ok_or_else(bad)?;
        let (toff, tlen) = (field(8).ok_or_else(bad)?, field(12).ok_or_else(bad)?);
        let (soff, slen) = (field(16).ok_or_else(bad)?, field(20).ok_or_else(bad)?);
        let section = |off: usize, len: usize| {
            raw.get(hdr + off..hdr + off + len)
                .ok_or_else(|| err("a kernel BTF section lies outside the file"))
        };
        let types = section(toff, tlen)?;
        let strings = section(soff, slen)?;
        // A first byte that starts no wanted name rules a structure out
        // without a string comparison.
        let mut first = [false; 256];
        for w in wanted {
            if let Some(&b) = w.first() {
                first[b as usize] = true;
            }
        }
        let mut structs = Vec::new();
        let mut at = Vec::with_capacity(1 << 17);
        at.push(0);
        let mut pos = 0usize;
        while pos < types.len() {
            at.push(pos as u32);
            let info =
                u32_at(types, pos + 4).ok_or_else(|| err("a kernel BTF type is cut short"))?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            if kind == STRUCT {
                let name_off = u32_at(types, pos).unwrap_or(0) as usize;
                if strings.get(name_off).is_some_and(|&b| first[b as usize]) {
                    let rest = &strings[name_off..];
                    if let Some(i) = wanted.iter().position(|w| {
                        rest.len() > w.len() && rest.starts_with(w) && rest[w.len()] == 0
                    }) {
                        structs.push(((at.len() - 1) as u32, i));
                    }
                }
            }
            let extra = match kind {
                INT | VAR | DECL_TAG => 4,
                ARRAY => 12,
                STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen,
                ENUM | FUNC_PROTO => 8 * vlen,
                PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
                k => {
                    return Err(err(format!(
                        "the kernel BTF has a type of unknown kind {k}"
                    )))
                }
            };
            pos += 12 + extra;
        }
        Ok(Btf {
            types,
            strings,
            at,
            structs,
        })
    }

    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
    }

    /// (name offset, kind, vlen, kind_flag, size-or-type) of type `id`.
    fn head(&self, id: u32) -> Option<(u32, u32, usize, bool, u32)> {
        let at = *self.at.get(id as usize)? as usize;
        let info = u32_at(self.types, at + 4)?;
        Some((
            u32_at(self.types, at)?,
            (info >> 24) & 0x1f,
            (info & 0xffff) as usize,
            info & (1 << 31) != 0,
            u32_at(self.types, at + 8)?,
        ))
    }

    /// `id` with typedefs and qualifiers skipped.
    fn skip_mods(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let (_, kind, _, _, t) = self.head(id)?;
            match kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t,
                _ => return Some(id),
            }
        }
        None
    }

    /// The member `name` of composite `id`, looked for inside anonymous
    /// members as C does: (bit offset from `id`'s start, member type).
    fn member(&self, id: u32, name: &[u8], depth: u32) -> Option<(u32, u32)> {
        let (_, kind, vlen, kflag, _) = self.head(id)?;
        if !(kind == STRUCT || kind == UNION) || depth > 8 {
            return None;
        }
        let at = self.at[id as usize] as usize + 12;
        for i in 0..vlen {
            let m = at + 12 * i;
            let (mname, mtype, moff) = (
                u32_at(self.types, m)?,
                u32_at(self.types, m + 4)?,
                u32_at(self.types, m + 8)?,
            );
            let off = if kflag { moff & 0x00ff_ffff } else { moff };
            if mname == 0 {
                let inner = self.skip_mods(mtype)?;
                if let Some((o, t)) = self.member(inner, name, depth + 1) {
                    return Some((off + o, t));
                }
            } else if self.name(mname) == name {
                return Some((off, mtype));
            }
        }
        None
    }
}

/// What a field is, as CO-RE compares it.
#[derive(Clone, Debug, PartialEq)]
enum Leaf {
    Int(u32),
    Ptr,
    Enum(u32),
    Array(Box<Leaf>, u32),
    Composite(Node),
}

/// A structure with the fields kept, by name: (bit offset, field).
#[derive(Clone, Debug, PartialEq, Default)]
struct Node {
    union: bool,
    size: u32,
    fields: BTreeMap<String, (u32, Leaf)>,
}

fn leaf(btf: &Btf<'_>, id: u32) -> Option<Leaf> {
    let id = btf.skip_mods(id)?;
    let (_, kind, _, _, size) = btf.head(id)?;
    Some(match kind {
        INT => Leaf::Int(size),
        PTR => Leaf::Ptr,
        ENUM | ENUM64 => Leaf::Enum(size),
        ARRAY => {
            let at = btf.at[id as usize] as usize + 12;
            let elem = u32_at(btf.types, at)?;
            let n = u32_at(btf.types, at + 8)?;
            Leaf::Array(Box::new(leaf(btf, elem)?), n)
        }
        STRUCT | UNION => Leaf::Composite(Node {
            union: kind == UNION,
            size,
            fields: BTreeMap::new(),
        }),
        _ => return None,
    })
}

/// Adds `path` ("a.b.c") of composite `id` to `node`.
fn add_path(btf: &Btf<'_>, id: u32, node: &mut Node, path: &str) -> Option<()> {
    let (first, rest) = match path.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (path, None),
    };
    let (off, mtype) = btf.member(id, first.as_bytes(), 0)?;
    let entry = node
        .fields
        .entry(first.to_string())
        .or_insert((off, leaf(btf, mtype)?));
    match rest {
        None => Some(()),
        Some(rest) => {
            let Leaf::Composite(inner) = &mut entry.1 else {
                return None;
            };
            add_path(btf, btf.skip_mods(mtype)?, inner, rest)
        }
    }
}

/// Writes BTF: types are appended in order, ids from 1.
#[derive(Default)]
struct Writer {
    types: Vec<u8>,
    strings: Vec<u8>,
    names: HashMap<String, u32>,
    count: u32,
    ints: HashMap<u32, u32>,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            strings: vec![0],
            ..Writer::default()
        }
    }

    fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&off) = self.names.get(s) {
            return off;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        self.names.insert(s.to_string(), off);
        off
    }

    fn push(&mut self, words: &[u32]) -> u32 {
        for w in words {
            self.types.extend_from_slice(&w.to_ne_bytes());
        }
        self.count += 1;
        self.count
    }

    fn int(&mut self, size: u32) -> u32 {
        if let Some(&id) = self.ints.get(&size) {
            return id;
        }
        let name = self.name(&format!("u{}", size * 8));
        let id = self.push(&[name, INT << 24, size, size * 8]);
        self.ints.insert(size, id);
        id
    }

    fn leaf(&mut self, l: &Leaf) -> u32 {
        match l {
            Leaf::Int(size) => self.int(*size),
            Leaf::Ptr => self.push(&[0, PTR << 24, 0]),
            Leaf::Enum(size) => self.push(&[0, ENUM << 24, *size]),
            Leaf::Array(elem, n) => {
                let e = self.leaf(elem);
                let index = self.int(4);
                self.push(&[0, ARRAY << 24, 0, e, index, *n])
            }
            Leaf::Composite(node) => self.composite("", node),
        }
    }

    fn composite(&mut self, name: &str, node: &Node) -> u32 {
        // Member types first: a member's type id must be known when the
        // member is written.
        let mut members = Vec::with_capacity(node.fields.len());
        for (fname, (off, l)) in &node.fields {
            let t = self.leaf(l);
            members.push((self.name(fname), t, *off));
        }
        members.sort_by_key(|m| m.2);
        let kind = if node.union { UNION } else { STRUCT };
        let mut words = vec![
            self.name(name),
            (kind << 24) | members.len() as u32,
            node.size,
        ];
        for (n, t, off) in members {
            words.extend_from_slice(&[n, t, off]);
        }
        self.push(&words)
    }

    fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HDR_LEN + self.types.len() + self.strings.len());
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.push(1); // version
        out.push(0); // flags
        for w in [
            HDR_LEN as u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// The minimal BTF for `fields` out of the kernel BTF `vmlinux`: every
/// structure named there, with every listed field path at the kernel's
/// offsets. Fails if one is missing.
pub fn minimal(vmlinux: &[u8], fields: &[(&str, &[&str])]) -> Result<Vec<u8>, Error> {
    let wanted: Vec<&[u8]> = fields.iter().map(|(name, _)| name.as_bytes()).collect();
    let btf = Btf::parse(vmlinux, &wanted)?;
    // The first structure of each name whose listed fields all resolve
    // (deduplicated kernel BTF has one; a second would be unusual).
    let mut found: Vec<Option<Node>> = vec![None; fields.len()];
    for &(id, i) in &btf.structs {
        let Some((_, _, _, _, size)) = btf.head(id) else {
            break;
        };
        if found[i].is_some() {
            continue;
        }
        let mut node = Node {
            union: false,
            size,
            fields: BTreeMap::new(),
        };
        if fields[i]
            .1
            .iter()
            .all(|p| add_path(&btf, id, &mut node, p).is_some())
        {
            found[i] = Some(node);
        }
    }
    let mut w = Writer::new();
    for ((name, _), node) in fields.iter().zip(&found) {
        let node = node.as_ref().ok_or_else(|| {
            err(format!(
                "the kernel's struct {name} lacks a field the recorder reads"
            ))
        })?;
        w.composite(name, node);
    }
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small kernel-like BTF, written with the same writer.
    fn sample() -> Vec<u8> {
        let mut w = Writer::new();
        let int = w.int(4);
        let ptr = w.push(&[0, PTR << 24, 0]);
        // struct path { void *mnt; void *dentry; }
        let (mnt, dentry) = (w.name("mnt"), w.name("dentry"));
        let path = w.composite_raw("path", STRUCT, 16, &[(mnt, ptr, 0), (dentry, ptr, 64)]);
        // union { int a; int counter; } as an anonymous member
        let (a, counter) = (w.name("a"), w.name("counter"));
        let anon = w.composite_raw("", UNION, 4, &[(a, int, 0), (counter, int, 0)]);
        let path_t = w.name("path_t");
        let tdef = w.push(&[path_t, TYPEDEF << 24, path]);
        let (pwd, x) = (w.name("pwd"), w.name("x"));
        w.composite_raw(
            "fs_struct",
            STRUCT,
            64,
            &[(x, int, 0), (0, anon, 32), (pwd, tdef, 128)],
        );
        w.finish()
    }

    impl Writer {
        fn composite_raw(
            &mut self,
            name: &str,
            kind: u32,
            size: u32,
            m: &[(u32, u32, u32)],
        ) -> u32 {
            let mut words = vec![self.name(name), (kind << 24) | m.len() as u32, size];
            for &(n, t, o) in m {
                words.extend_from_slice(&[n, t, o]);
            }
            self.push(&words)
        }
    }

    #[test]
    fn fields_resolve_through_typedefs_and_anonymous_members() {
        let raw = sample();
        let out = minimal(&raw, &[("fs_struct", &["pwd.dentry", "counter"])]).unwrap();
        let btf = Btf::parse(&out, &[]).unwrap();
        // The kept struct is the last type; its members at the kernel's offsets.
        let id = btf.at.len() as u32 - 1;
        assert_eq!(btf.name(btf.head(id).unwrap().0), b"fs_struct");
        assert_eq!(btf.member(id, b"counter", 0).map(|m| m.0), Some(32));
        let (off, t) = btf.member(id, b"pwd", 0).unwrap();
        assert_eq!(off, 128);
        let inner = btf.skip_mods(t).unwrap();
        assert_eq!(btf.member(inner, b"dentry", 0).map(|m| m.0), Some(64));
        assert_eq!(btf.member(inner, b"mnt", 0), None, "only the fields read");
        assert_eq!(
            leaf(&btf, btf.member(inner, b"dentry", 0).unwrap().1),
            Some(Leaf::Ptr)
        );
    }

    #[test]
    fn a_missing_field_or_structure_is_an_error() {
        let raw = sample();
        assert!(minimal(&raw, &[("fs_struct", &["pwd.nope"])]).is_err());
        assert!(minimal(&raw, &[("task_struct", &["pid"])]).is_err());
        assert!(minimal(&raw[..10], &[("fs_struct", &["x"])]).is_err());
        let mut cut = raw.clone();
        cut.truncate(raw.len() - 30);
        assert!(minimal(&cut, &[("fs_struct", &["x"])]).is_err());
    }

    #[test]
    fn the_running_kernel_has_every_field_the_recorder_reads() {
        let Ok(raw) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "no /sys/kernel/btf/vmlinux: the kernel lacks CONFIG_DEBUG_INFO_BTF"
            );
            return;
        };
        let out = minimal(&raw, FIELDS).unwrap();
        let btf = Btf::parse(&out, &[]).unwrap();
        assert!(btf.at.len() > FIELDS.len());
        assert!(out.len() < 4096, "{} bytes", out.len());
    }
}
