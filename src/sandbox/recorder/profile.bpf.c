// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// tresor's in-kernel recorder (docs/PROFILE.md "Recorders"): counts, for
// one analysis's process tree, the syscalls, the argument values and the
// paths the profile needs, aggregated in the kernel — no event per call.
// Counts and argument values live in maps; a path is sent to tresor once,
// the first time it is seen (a set of path hashes decides), through a ring
// buffer. Whatever does not fit is counted in `stats`, never dropped
// silently.
//
// Compiled by clang (build.rs, libbpf-cargo) without vmlinux.h: the few
// kernel structures read are declared below with only the fields used and
// relocated against the running kernel's BTF (CO-RE).

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
};
enum { BPF_ANY = 0, BPF_NOEXIST = 1 };
#define BPF_F_NO_PREALLOC 1

struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

// ---- kernel structures (CO-RE: only the fields read) ----
#define PAI __attribute__((preserve_access_index))

#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long di, si, dx, r10, r8, r9;
} PAI;
// The six argument registers lie within the 64 bytes from r10 to di
// (read at once); REG_INDEXES: each one's word in them, in ABI order.
#define REGS_FIRST r10
#define REG_AT(f) ((int)((bpf_core_field_offset(struct pt_regs, f) - \
			  bpf_core_field_offset(struct pt_regs, REGS_FIRST)) >> 3))
#define REG_INDEXES { REG_AT(di), REG_AT(si), REG_AT(dx), REG_AT(r10), REG_AT(r8), REG_AT(r9) }
#elif defined(__TARGET_ARCH_arm64)
struct user_pt_regs {
	__u64 regs[31];
} PAI;
struct pt_regs {
	struct user_pt_regs user_regs;
	__u64 orig_x0;
} PAI;
// x1..x5 from regs[0..7] (read at once); the first argument from
// orig_x0, as the kernel's own syscall_get_arguments takes it.
#define REGS_FIRST user_regs.regs[0]
#define REG_INDEXES { -1, 1, 2, 3, 4, 5 }
#else
#error "tresor's recorder supports x86_64 and aarch64"
#endif

struct qstr {
	const unsigned char *name;
} PAI;
struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} PAI;
struct vfsmount {
	struct dentry *mnt_root;
} PAI;
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} PAI;
struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} PAI;
struct fs_struct {
	struct path root;
	struct path pwd;
} PAI;
struct file {
	struct path f_path;
} PAI;
struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} PAI;
struct files_struct {
	struct fdtable *fdt;
} PAI;
typedef struct {
	int counter;
} atomic_t;
struct signal_struct {
	atomic_t live;
} PAI;
#if defined(__TARGET_ARCH_x86)
struct thread_info {
	__u32 status;
} PAI;
#define TS_COMPAT 0x0002 // the task is in a 32-bit syscall (int 0x80)
#endif
struct task_struct {
#if defined(__TARGET_ARCH_x86)
	struct thread_info thread_info;
#endif
	int pid;
	int tgid;
	struct fs_struct *fs;
	struct files_struct *files;
	struct signal_struct *signal;
} PAI;
struct linux_binprm {
	const char *filename;
} PAI;

// ---- shared with src/sandbox/recorder/bpf.rs (keep in step) ----
#define NR_SLOTS 1024        // syscall numbers 0..1023; 1024: beyond
#define RAW_LEN 464          // bytes of a path argument kept (with its NUL)
#define NAME_LEN 256         // a directory name component (NAME_MAX + 1)
#define MAX_DEPTH 32         // components of a directory path

// What the syscall at a number needs read (filled by user space from the
// same table the ptrace recorder uses).
enum kind { K_COUNT = 0, K_PATHS = 1, K_ARGS = 2, K_EXEC = 3 };
enum flags_rule { F_NONE = 0, F_REG = 1, F_HOW = 2 };
#define NO_ARG 0xff

struct action {
	__u8 kind;
	__u8 dirfd[2];   // register index of the dirfd, NO_ARG: none
	__u8 path[2];    // register index of the path, NO_ARG: none
	__u8 flags_rule; // F_*
	__u8 flags_arg;  // register index of the flags / open_how
	__u8 nargs;
	__u8 arg[2];     // register indexes of recorded argument values
	__u8 pad[6];
};

// Task states in `tracked`.
enum { T_BEFORE_EXEC = 0, T_ACTIVE = 1 };

// Key status bits.
#define S_TRUNCATED 1   // the path argument was longer than RAW_LEN - 1
#define S_HOW_FAILED 2  // openat2's open_how could not be read
#define S_DIR_UNKNOWN 4 // relative path whose base directory could not be read
#define S_EXEC 8        // an executed program (recorded at its exec)

// A path record, as sent to tresor: the header and `len` bytes of `raw`.
struct path_key {
	__u64 dir_mnt;    // base directory of a relative path (0: absolute)
	__u64 dir_dentry;
	__u64 flags;      // open flags (open_how.flags for openat2)
	__u32 nr;
	__u16 slot;       // which path argument (0 or 1)
	__u16 status;     // S_*
	__u32 len;        // bytes of raw, with the NUL
	__u32 pad;
	char raw[RAW_LEN];
};
#define PATH_HEADER 40    // offsetof(struct path_key, raw)

struct dir_key {
	__u64 mnt;
	__u64 dentry;
};

struct dir_val {
	__u32 depth;     // components in names[], innermost first
	__u32 status;    // 1: deeper than MAX_DEPTH; 2: a name unreadable
	char names[MAX_DEPTH * NAME_LEN]; // NUL-terminated, NAME_LEN apart
};

// A call's six argument registers.
struct call {
	__u64 a[6];
};

// A call whose path could not be read at entry, kept for a retry.
struct retry_val {
	struct call c;
	__u32 nr;
	__u32 pad;
};

struct args_key {
	__u32 nr;
	__u32 pad;
	__u64 v[2];
};

// Counters in `stats`.
enum {
	ST_PROCESSES = 0,   // forks and vforks followed
	ST_THREADS,         // threads created
	ST_LIVE,            // tasks alive (set to 1 for the root by user space)
	ST_LOST_TASKS,      // a new process did not fit into `tracked`
	ST_LOST_ARGS,       // an argument tuple did not fit into `args`
	ST_LOST_PATHS,      // unused (paths are never dropped for want of room in `seen`)
	ST_LOST_DIRS,       // a directory did not fit into `dirs`
	ST_READ_FAILED,     // a path argument could not be read
	ST_TRUNCATED,       // a path argument was cut at RAW_LEN - 1 bytes
	ST_LOST_EXECS,      // an exec did not fit into `pending`
	ST_DIR_DEEP,        // a directory deeper than MAX_DEPTH
	ST_LOST_SENT,       // a new path did not fit into the ring buffer
	ST_MAX
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); // sized to the task limit by tresor
	__uint(map_flags, BPF_F_NO_PREALLOC); // no entries allocated at load
	__type(key, __u32);   // tgid
	__type(value, __u32); // T_*
} tracked SEC(".maps");





// Counters in .bss: tresor reads them once the tree has ended, through the
// mmapped section, without a syscall per entry.
__u64 counts[NR_SLOTS + 1];  // calls by number (NR_SLOTS: beyond)
__u64 foreign[NR_SLOTS + 1]; // calls through the 32-bit ABI (x86_64's int 0x80)
__s64 retries;                // entries waiting in `retry`
__u64 seed;                   // of the path hashes, random per run (set by tresor)
// What each syscall needs read, written by tresor through the mmapped
// section before the tree starts (a map update per row was a syscall).
struct action actions[NR_SLOTS];
// Hashes of the path records sent, an open-addressing table (0: free):
// claimed with a compare-and-swap, no allocation, no lock. A record whose
// hash finds no free slot within SEEN_PROBES is sent again (tresor drops
// the duplicate), so a full table costs buffer space, never a path.
#define SEEN_SLOTS 65536
#define SEEN_PROBES 8
__u64 seen[SEEN_SLOTS];

// Read by tresor while the tree runs (the live-task count): a map.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __s64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct args_key);
	__type(value, __u8);
} args SEC(".maps");


// New path records for tresor, which drains it every 20 ms and at the end
// (room for ~10,000 records between two drains; 1 MB is allocated at load).
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} sent SEC(".maps");
#define BPF_RB_NO_WAKEUP 1 // tresor drains on its tick, no one waits

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dir_key);
	__type(value, struct dir_val);
} dirs SEC(".maps");

// An execve's path, kept from its entry until the exec succeeds.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); // tid
	__type(value, struct path_key);
} pending SEC(".maps");

// Calls whose path argument could not be read at entry (its page not yet
// faulted in): read again at the thread's next syscall, after the kernel
// has copied (and so faulted in) the string.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); // tid
	__type(value, struct retry_val);
} retry SEC(".maps");

// Per-CPU scratch space (too large for the 512-byte stack).
struct scratch {
	struct path_key key;
	struct dir_val dir;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

char LICENSE[] SEC("license") = "GPL";

static __always_inline void stat_add(__u32 which, __s64 n)
{
	__s64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		__sync_fetch_and_add(v, n);
}

// A call's six argument registers, in one read (a CO-RE read per
// register was a helper call each). A register outside the 64 bytes (a
// kernel whose pt_regs is laid out otherwise) reads as 0 and is counted:
// the profile is then marked incomplete.
static __always_inline void read_call(struct pt_regs *r, struct call *c)
{
	__u64 w[8] = {};
	const int at[6] = REG_INDEXES;
	bpf_probe_read_kernel(w, sizeof(w),
			      (void *)r + bpf_core_field_offset(struct pt_regs, REGS_FIRST));
	for (int i = 0; i < 6; i++) {
		int j = at[i];
		if (j >= 0 && j < 8)
			c->a[i] = w[j];
#if defined(__TARGET_ARCH_x86)
		else
			stat_add(ST_READ_FAILED, 1);
#endif
	}
#if defined(__TARGET_ARCH_arm64)
	c->a[0] = BPF_CORE_READ(r, orig_x0);
#endif
}

static __always_inline struct mount *real_mount(struct vfsmount *m)
{
	return (struct mount *)((void *)m - bpf_core_field_offset(struct mount, mnt));
}

struct walk {
	struct dentry *d;
	struct vfsmount *vm;
	struct mount *m;
	struct dentry *root_d;
	struct vfsmount *root_m;
	struct dir_val *v;
	__u32 depth;
	bool done;
};

// One step of a directory walk (bpf_loop callback): 1 ends the walk.
static long walk_step(__u64 index, void *ctx)
{
	struct walk *w = ctx;
	// Locals: BPF_CORE_READ would relocate `w->` itself.
	struct dentry *d = w->d;
	struct vfsmount *vm = w->vm;
	struct mount *m = w->m;
	if (d == w->root_d && vm == w->root_m) {
		w->done = true;
		return 1;
	}
	struct dentry *mnt_root = BPF_CORE_READ(vm, mnt_root);
	if (d == mnt_root) {
		struct mount *parent = BPF_CORE_READ(m, mnt_parent);
		if (parent == m) {
			w->done = true; // the namespace's root mount
			return 1;
		}
		w->d = BPF_CORE_READ(m, mnt_mountpoint);
		w->m = parent;
		w->vm = (struct vfsmount *)((void *)parent + bpf_core_field_offset(struct mount, mnt));
		return 0;
	}
	struct dentry *up = BPF_CORE_READ(d, d_parent);
	if (up == d) {
		w->done = true;
		return 1;
	}
	if (w->depth >= MAX_DEPTH)
		return 1;
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	if (bpf_probe_read_kernel_str(&w->v->names[(w->depth & (MAX_DEPTH - 1)) * NAME_LEN],
				      NAME_LEN, name) < 0)
		w->v->status |= 2;
	w->depth++;
	w->d = up;
	return 0;
}

// The names from `dir` up to the task's root, innermost first, cached per
// (mount, dentry): a directory is walked once per run. A global function:
// verified once, not at each caller (kernel pointers pass as numbers).
__noinline int remember_dir(__u64 task_p, struct dir_val *v, __u64 vm_p, __u64 d_p)
{
	struct task_struct *task = (struct task_struct *)task_p;
	struct vfsmount *vm = (struct vfsmount *)vm_p;
	struct dentry *d = (struct dentry *)d_p;
	struct dir_key k = { .mnt = vm_p, .dentry = d_p };
	if (!v || bpf_map_lookup_elem(&dirs, &k))
		return 0;
	struct walk w = {
		.d = d,
		.vm = vm,
		.m = real_mount(vm),
		.root_d = BPF_CORE_READ(task, fs, root.dentry),
		.root_m = BPF_CORE_READ(task, fs, root.mnt),
		.v = v,
	};
	v->status = 0;
	bpf_loop(MAX_DEPTH + 16, walk_step, &w, 0);
	if (!w.done) {
		v->status |= 1;
		stat_add(ST_DIR_DEEP, 1);
	}
	v->depth = w.depth;
	if (bpf_map_update_elem(&dirs, &k, v, BPF_NOEXIST) == -7 /* E2BIG */)
		stat_add(ST_LOST_DIRS, 1);
	return 0;
}

// Fills s->key from path argument `slot` of the call; returns 0 when there
// is a path to record.
static __always_inline __u64 arg(struct call *c, __u8 i)
{
	return i < 6 ? c->a[i] : 0;
}

static __always_inline int read_path(struct task_struct *task, struct scratch *s,
				     struct call *c, __u32 nr, struct action *a, int slot)
{
	struct path_key *k = &s->key;
	__u8 pi = slot ? a->path[1] : a->path[0];
	__u8 di = slot ? a->dirfd[1] : a->dirfd[0];
	if (pi == NO_ARG)
		return -1;
	const char *up = (const char *)arg(c, pi);
	// The header only: raw is cut at len (hash and record alike).
	__builtin_memset(k, 0, PATH_HEADER);
	k->nr = nr;
	k->slot = slot;
	if (!up)
		return -1;
	long n = bpf_probe_read_user_str(k->raw, RAW_LEN, up);
	if (n < 0)
		return -2;
	if (n <= 1)
		return -1; // "": AT_EMPTY_PATH, the fd itself
	k->len = n;
	if (n >= RAW_LEN) {
		k->status |= S_TRUNCATED;
		stat_add(ST_TRUNCATED, 1);
	}
	if (a->flags_rule == F_REG) {
		k->flags = arg(c, a->flags_arg);
	} else if (a->flags_rule == F_HOW) {
		__u64 f = 0;
		if (bpf_probe_read_user(&f, sizeof(f), (void *)arg(c, a->flags_arg)) < 0)
			k->status |= S_HOW_FAILED;
		k->flags = f;
	}
	if (k->raw[0] == '/')
		return 0;
	// Relative: the base is the working directory or the dirfd's file.
	struct vfsmount *vm = 0;
	struct dentry *d = 0;
	int dirfd = -100; // AT_FDCWD
	if (di != NO_ARG)
		dirfd = (int)arg(c, di);
	if (dirfd == -100) {
		vm = BPF_CORE_READ(task, fs, pwd.mnt);
		d = BPF_CORE_READ(task, fs, pwd.dentry);
	} else if (dirfd >= 0) {
		struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
		unsigned int max = BPF_CORE_READ(fdt, max_fds);
		if ((unsigned int)dirfd < max) {
			struct file **fds = BPF_CORE_READ(fdt, fd);
			struct file *f = 0;
			bpf_probe_read_kernel(&f, sizeof(f), &fds[dirfd]);
			if (f) {
				vm = BPF_CORE_READ(f, f_path.mnt);
				d = BPF_CORE_READ(f, f_path.dentry);
			}
		}
	}
	if (!vm || !d) {
		k->status |= S_DIR_UNKNOWN;
		return 0;
	}
	k->dir_mnt = (__u64)vm;
	k->dir_dentry = (__u64)d;
	remember_dir((__u64)task, &s->dir, (__u64)vm, (__u64)d);
	return 0;
}

static __always_inline __u64 mix(__u64 h, __u64 v)
{
	h ^= v;
	h *= 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 31);
}

struct hashing {
	struct path_key *k;
	__u64 h;
	__u32 len;
};

// One word of a path into its hash (bpf_loop callback: verified once, not
// once per word as an unrolled loop would be).
static long hash_word(__u64 i, void *ctx)
{
	struct hashing *x = ctx;
	if (i >= RAW_LEN / 8)
		return 1;
	__u64 w = ((__u64 *)x->k->raw)[i];
	__u32 rest = x->len - i * 8; // bytes of the path from this word on
	if (rest < 8)
		w &= (1ULL << (rest * 8)) - 1; // not what an earlier call left
	x->h = mix(x->h, w);
	return 0;
}

// A path record's hash: the header and the len bytes of raw. Two records
// of one hash are taken as one (tresor then lacks the second path: its
// run is denied that path, never granted more); the seed is random per
// run, so a program cannot aim for a collision.
static __always_inline __u64 record_hash(struct path_key *k)
{
	__u64 h = mix(seed, k->dir_mnt);
	h = mix(h, k->dir_dentry);
	h = mix(h, k->flags);
	h = mix(h, (__u64)k->nr | (__u64)k->slot << 32 | (__u64)k->status << 48);
	struct hashing x = { .k = k, .h = h, .len = k->len };
	bpf_loop((k->len + 7) / 8, hash_word, &x, 0);
	return x.h;
}

struct probe {
	__u64 h;
	__u32 slot; // claimed, SEEN_SLOTS: none
	bool sent;  // sent before (by this or another CPU)
};

// One probe of the sent set (bpf_loop callback: verified once).
static long probe_step(__u64 i, void *ctx)
{
	struct probe *p = ctx;
	__u32 at = (__u32)(p->h + i) & (SEEN_SLOTS - 1);
	__u64 cur = seen[at];
	if (cur == p->h) {
		p->sent = true;
		return 1;
	}
	if (cur != 0)
		return 0;
	__u64 old = __sync_val_compare_and_swap(&seen[at], 0, p->h);
	if (old == p->h) {
		p->sent = true; // another CPU sent it just now
		return 1;
	}
	if (old == 0) {
		p->slot = at;
		return 1;
	}
	return 0;
}

// Sends a record the first time its hash is seen.
__noinline int send_once(struct path_key *k)
{
	if (!k)
		return 0;
	struct probe p = { .h = record_hash(k) | 1, .slot = SEEN_SLOTS }; // never 0, the free mark
	bpf_loop(SEEN_PROBES, probe_step, &p, 0);
	if (p.sent)
		return 0;
	__u32 len = k->len;
	if (len > RAW_LEN)
		len = RAW_LEN;
	if (bpf_ringbuf_output(&sent, k, PATH_HEADER + len, BPF_RB_NO_WAKEUP) != 0) {
		stat_add(ST_LOST_SENT, 1);
		if (p.slot < SEEN_SLOTS) // a later call may send it
			__sync_val_compare_and_swap(&seen[p.slot & (SEEN_SLOTS - 1)], p.h, 0);
	}
	return 0;
}

// Records path argument `slot` of one call of number `nr`; returns 1
// when it could not be read. A global function: the verifier checks it
// once, not once per caller and slot.
__noinline int record_path(struct call *c, __u32 nr, int slot)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!c || !s || nr >= NR_SLOTS)
		return 0;
	barrier_var(nr); // keeps the mask below, which the verifier needs
	struct action *a = &actions[nr & (NR_SLOTS - 1)];
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	int r = read_path(task, s, c, nr, a, slot);
	if (r != 0)
		return r == -2;
	if (a->kind == K_EXEC) {
		// Recorded at the exec: misses of execvp's $PATH walk are no grants.
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		if (bpf_map_update_elem(&pending, &tid, &s->key, BPF_ANY) != 0)
			stat_add(ST_LOST_EXECS, 1);
		return 0;
	}
	send_once(&s->key);
	return 0;
}

static __always_inline int record_paths(struct call *c, __u32 nr)
{
	return record_path(c, nr, 0) + record_path(c, nr, 1);
}

// The thread's previous call left a path unreadable at its entry: read it
// now (the call has run; the kernel faulted the page in if it was valid).
static __noinline void retry_previous(__u32 tid)
{
	struct retry_val *v = bpf_map_lookup_elem(&retry, &tid);
	if (!v)
		return;
	struct retry_val r = *v;
	bpf_map_delete_elem(&retry, &tid);
	__sync_fetch_and_add(&retries, -1);
	if (r.nr >= NR_SLOTS)
		return;
	int failed = record_paths(&r.c, r.nr);
	if (failed > 0)
		stat_add(ST_READ_FAILED, failed); // a bad pointer: the call failed with EFAULT
}

SEC("raw_tracepoint/sys_enter")
int on_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 pt = bpf_get_current_pid_tgid();
	__u32 tgid = pt >> 32;
	__u32 *state = bpf_map_lookup_elem(&tracked, &tgid);
	if (!state || *state != T_ACTIVE)
		return 0;
	if (retries > 0)
		retry_previous((__u32)pt);
	__u64 id = ctx->args[1];
	__u32 slot = id < NR_SLOTS ? (__u32)id : NR_SLOTS;
#if defined(__TARGET_ARCH_x86)
	// A typed pointer: the field is loaded directly, not by a helper.
	struct task_struct *cur = bpf_get_current_task_btf();
	if (cur->thread_info.status & TS_COMPAT) {
		__sync_fetch_and_add(&foreign[slot], 1);
		return 0;
	}
#endif
	__sync_fetch_and_add(&counts[slot], 1);
	if (slot == NR_SLOTS)
		return 0;
	struct action *a = &actions[slot];
	if (a->kind == K_COUNT)
		return 0;
	struct retry_val r = { .nr = slot };
	read_call((struct pt_regs *)ctx->args[0], &r.c);
	if (a->kind == K_ARGS) {
		struct args_key k = { .nr = slot };
		if (a->nargs > 0)
			k.v[0] = arg(&r.c, a->arg[0]);
		if (a->nargs > 1)
			k.v[1] = arg(&r.c, a->arg[1]);
		if (!bpf_map_lookup_elem(&args, &k)) {
			__u8 one = 1;
			if (bpf_map_update_elem(&args, &k, &one, BPF_NOEXIST) == -7)
				stat_add(ST_LOST_ARGS, 1);
		}
		return 0;
	}
	__u8 kind = a->kind;
	if (record_paths(&r.c, slot) > 0) {
		__u32 tid = (__u32)pt;
		if (kind == K_EXEC) {
			// Read from the kernel's copy at the exec, not a stale one.
			bpf_map_delete_elem(&pending, &tid);
			return 0;
		}
		if (bpf_map_update_elem(&retry, &tid, &r, BPF_ANY) != 0)
			stat_add(ST_READ_FAILED, 1);
		else
			__sync_fetch_and_add(&retries, 1);
	}
	return 0;
}

SEC("raw_tracepoint/sched_process_exec")
int on_exec(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 *state = bpf_map_lookup_elem(&tracked, &tgid);
	if (!state)
		return 0;
	if (*state == T_BEFORE_EXEC) {
		// The analysis's first execve: recording starts now.
		*state = T_ACTIVE;
		return 0;
	}
	__u32 old = (__u32)ctx->args[1];
	struct path_key *k = bpf_map_lookup_elem(&pending, &old);
	if (!k) {
		// The path was unreadable at entry: the kernel's copy of it.
		__u32 zero = 0;
		struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
		if (!s)
			return 0;
		struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
		const char *name = BPF_CORE_READ(bprm, filename);
		k = &s->key;
		__builtin_memset(k, 0, PATH_HEADER);
		long n = bpf_probe_read_kernel_str(k->raw, RAW_LEN, name);
		if (n <= 1) {
			stat_add(ST_READ_FAILED, 1);
			return 0;
		}
		k->len = n;
		if (n >= RAW_LEN) {
			k->status |= S_TRUNCATED;
			stat_add(ST_TRUNCATED, 1);
		}
		if (k->raw[0] != '/') {
			struct task_struct *task = (struct task_struct *)bpf_get_current_task();
			struct vfsmount *vm = BPF_CORE_READ(task, fs, pwd.mnt);
			struct dentry *d = BPF_CORE_READ(task, fs, pwd.dentry);
			k->dir_mnt = (__u64)vm;
			k->dir_dentry = (__u64)d;
			remember_dir((__u64)task, &s->dir, (__u64)vm, (__u64)d);
		}
	}
	k->status |= S_EXEC;
	send_once(k);
	bpf_map_delete_elem(&pending, &old);
	return 0;
}

SEC("raw_tracepoint/sched_process_fork")
int on_fork(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 *state = bpf_map_lookup_elem(&tracked, &tgid);
	if (!state || *state != T_ACTIVE)
		return 0;
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 pid = BPF_CORE_READ(child, pid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	stat_add(ST_LIVE, 1);
	if (pid != ctgid) {
		stat_add(ST_THREADS, 1);
		return 0;
	}
	stat_add(ST_PROCESSES, 1);
	__u32 active = T_ACTIVE;
	if (bpf_map_update_elem(&tracked, &ctgid, &active, BPF_ANY) != 0)
		stat_add(ST_LOST_TASKS, 1);
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int on_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 pt = bpf_get_current_pid_tgid();
	__u32 tgid = pt >> 32;
	__u32 tid = (__u32)pt;
	if (!bpf_map_lookup_elem(&tracked, &tgid))
		return 0;
	stat_add(ST_LIVE, -1);
	bpf_map_delete_elem(&pending, &tid);
	if (retries > 0 && bpf_map_delete_elem(&retry, &tid) == 0) {
		// Killed before its next call: the memory is gone.
		__sync_fetch_and_add(&retries, -1);
		stat_add(ST_READ_FAILED, 1);
	}
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (BPF_CORE_READ(task, signal, live.counter) == 0)
		bpf_map_delete_elem(&tracked, &tgid); // the whole process is gone
	return 0;
}
