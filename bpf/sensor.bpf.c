// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* leash's kernel programs.
 *
 * Fallback tier (every kernel with cgroup BPF): cgroup sock_addr programs
 * decide connect() and sendmsg() from the session's address tables and a
 * sock_create program refuses ICMP sockets; tracepoints report execs, forks
 * and exits (opens and execs are decided by fanotify in user space).
 *
 * LSM tier (kernels that run BPF LSM): file_open, bprm_check_security,
 * mmap_file/file_mprotect and the path hooks decide from the session's
 * file tables in the maps below, for the actions the sensor hands them
 * (`lsm_files`; a table only user space can decide stays with fanotify).
 *
 * Only sessions registered in `sessions` (by their container's cgroup id)
 * are governed; anything else costs one hash lookup.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "leash/common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define EPERM 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LEASH_MAX_SESSIONS);
	__type(key, __u64);
	__type(value, struct leash_session);
} sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LEASH_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct leash_lpm4);
	__type(value, struct leash_verdict);
} net4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LEASH_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct leash_lpm6);
	__type(value, struct leash_verdict);
} net6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LEASH_MAX_RULES);
	__type(key, struct leash_port_key);
	__type(value, struct leash_verdict);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} events SEC(".maps");

/* Events the ring buffer had no room for, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

/* Wake the reader once per this many events (a timer in user space reads the rest). */
const volatile __u32 wakeup_every = 64;

static __always_inline struct leash_session *governed(void)
{
	__u64 cg = bpf_get_current_cgroup_id();
	return bpf_map_lookup_elem(&sessions, &cg);
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&dropped, &zero);
	if (n)
		*n += 1;
}

static __always_inline struct leash_event *fill(struct leash_event *e)
{
	if (!e) {
		count_drop();
		return 0;
	}
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	e->time_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->flags = 0;
	e->port = 0;
	e->pad = 0;
	e->verdict = 0;
	e->family = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->path[0] = 0;
	return e;
}

static __always_inline struct leash_event *reserve(void)
{
	return fill(bpf_ringbuf_reserve(&events, sizeof(struct leash_event), 0));
}

/* An event with room for the whole of a long path after it. */
static __always_inline struct leash_event_long *reserve_long(void)
{
	return (struct leash_event_long *)fill(bpf_ringbuf_reserve(&events, sizeof(struct leash_event_long), 0));
}

static __always_inline void submit(struct leash_event *e)
{
	static __u32 n;
	__u64 flags = (++n % wakeup_every) == 0 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

/* The table entry for an address (IPv4 as IPv4-mapped IPv6 in `addr`) and
 * port; 0 when no entry names it. */
static __always_inline __u32 table_entry(struct leash_session *s, const __u8 addr[16], int v4, __u16 port)
{
	struct leash_port_key pk = {.slot = s->slot, .port = port};
	__builtin_memcpy(pk.addr, addr, 16);
	struct leash_verdict *v = bpf_map_lookup_elem(&ports, &pk);
	if (v)
		return v->v;
	if (v4) {
		struct leash_lpm4 k = {.prefixlen = 64, .slot = s->slot};
		__builtin_memcpy(k.addr, addr + 12, 4);
		v = bpf_map_lookup_elem(&net4, &k);
		return v ? v->v : 0;
	}
	struct leash_lpm6 k = {.prefixlen = 160, .slot = s->slot};
	__builtin_memcpy(k.addr, addr, 16);
	v = bpf_map_lookup_elem(&net6, &k);
	return v ? v->v : 0;
}

#define SOCK_STREAM 1

/* The verdict for a destination: its table entry, else the default; TCP 80
 * and 443 that no entry names go to leash-proxy's redirect where it
 * intercepts the session. */
static __always_inline __u32 decide(struct leash_session *s, const __u8 addr[16], int v4, __u16 port, __u32 type)
{
	__u32 entry = table_entry(s, addr, v4, port);
	if (entry)
		return entry;
	if (s->proxied && type == SOCK_STREAM && (port == 80 || port == 443))
		return LEASH_VERDICT_ALLOW | LEASH_VERDICT_PROXY;
	return v4 ? s->default4 : s->default6;
}

/* IPv4-mapped IPv6 (::ffff:a.b.c.d) is decided as the IPv4 address it is. */
static __always_inline int ipv4_mapped(const __u8 addr[16])
{
	__u32 a0, a1, a2;
	__builtin_memcpy(&a0, addr, 4);
	__builtin_memcpy(&a1, addr + 4, 4);
	__builtin_memcpy(&a2, addr + 8, 4);
	return a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff);
}

/* Decides a destination (IPv4 as IPv4-mapped IPv6 in `addr`) and reports
 * it, for the cgroup programs and the LSM hooks alike; true when refused.
 * Record mode lets it through, and so does a table that cannot decide
 * (but for the guards). */
static __always_inline int refuse_destination(struct leash_session *s, __u32 kind, const __u8 addr[16], int v4,
					      __u16 port, __u32 type)
{
	__u32 verdict = s->mode == LEASH_MODE_RECORD ? LEASH_VERDICT_ALLOW : decide(s, addr, v4, port, type);
	if (s->evaluate && !(verdict & LEASH_VERDICT_GUARD))
		verdict = LEASH_VERDICT_ALLOW;
	struct leash_event *e = reserve();
	if (e) {
		e->kind = kind;
		e->mode = s->mode;
		e->verdict = verdict;
		e->family = v4 ? AF_INET : AF_INET6;
		e->port = port;
		e->flags = type;
		__builtin_memcpy(e->addr, addr, 16);
		submit(e);
	}
	return s->mode == LEASH_MODE_ENFORCE && !(verdict & LEASH_VERDICT_ALLOW);
}

/* Decides a socket address operation; 1 lets it through, 0 refuses (EPERM). */
static __always_inline int govern(struct bpf_sock_addr *ctx, __u32 kind, int v6)
{
	struct leash_session *s = governed();
	if (!s)
		return 1;
	__u8 addr[16] = {};
	int v4 = 1;
	if (v6) {
		__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
		__builtin_memcpy(addr, &a0, 4);
		__builtin_memcpy(addr + 4, &a1, 4);
		__builtin_memcpy(addr + 8, &a2, 4);
		__builtin_memcpy(addr + 12, &a3, 4);
		v4 = ipv4_mapped(addr);
	} else {
		__u32 a = ctx->user_ip4;
		addr[10] = 0xff;
		addr[11] = 0xff;
		__builtin_memcpy(addr + 12, &a, 4);
	}
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	return !refuse_destination(s, kind, addr, v4, port, ctx->type);
}

SEC("cgroup/connect4")
int leash_connect4(struct bpf_sock_addr *ctx)
{
	return govern(ctx, LEASH_EV_CONNECT, 0);
}

SEC("cgroup/connect6")
int leash_connect6(struct bpf_sock_addr *ctx)
{
	return govern(ctx, LEASH_EV_CONNECT, 1);
}

SEC("cgroup/sendmsg4")
int leash_sendmsg4(struct bpf_sock_addr *ctx)
{
	return govern(ctx, LEASH_EV_SENDMSG, 0);
}

SEC("cgroup/sendmsg6")
int leash_sendmsg6(struct bpf_sock_addr *ctx)
{
	return govern(ctx, LEASH_EV_SENDMSG, 1);
}

#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define IPPROTO_ICMP 1
#define IPPROTO_ICMPV6 58

/* ICMP sockets: an unprivileged "ping" socket sends to any address without
 * the connect/sendmsg hooks seeing it. A governed session gets none in
 * enforce mode (reported in every mode). */
SEC("cgroup/sock_create")
int leash_sock_create(struct bpf_sock *sk)
{
	struct leash_session *s = governed();
	if (!s)
		return 1;
	if (sk->protocol != IPPROTO_ICMP && sk->protocol != IPPROTO_ICMPV6)
		return 1;
	if (sk->type != SOCK_DGRAM && sk->type != SOCK_RAW)
		return 1;
	struct leash_event *e = reserve();
	if (e) {
		e->kind = LEASH_EV_ICMP;
		e->mode = s->mode;
		e->verdict = LEASH_VERDICT_PRESENT; /* denied: no policy names ICMP */
		e->family = sk->family;
		e->flags = sk->type;
		e->port = 0;
		submit(e);
	}
	return s->mode == LEASH_MODE_ENFORCE ? 0 : 1;
}

/* Every exec in a governed session, with the path the kernel resolved. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(leash_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct leash_session *s = governed();
	if (!s)
		return 0;
	struct leash_event *e = reserve();
	if (!e)
		return 0;
	e->kind = LEASH_EV_EXEC;
	e->mode = s->mode;
	e->verdict = LEASH_VERDICT_ALLOW;
	bpf_probe_read_kernel_str(e->path, sizeof(e->path), BPF_CORE_READ(bprm, filename));
	submit(e);
	return 0;
}

/* Process lineage: every new process (not thread) in a governed session. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(leash_fork, struct task_struct *parent, struct task_struct *child)
{
	struct leash_session *s = governed();
	if (!s)
		return 0;
	if (child->tgid == parent->tgid)
		return 0;
	struct leash_event *e = reserve();
	if (!e)
		return 0;
	e->kind = LEASH_EV_FORK;
	e->mode = s->mode;
	e->pid = child->tgid;
	e->tid = child->pid;
	e->ppid = parent->tgid;
	submit(e);
	return 0;
}

/* ... and its end, when the last thread of a governed process exits. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(leash_exit, struct task_struct *p)
{
	struct leash_session *s = governed();
	if (!s)
		return 0;
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	struct leash_event *e = reserve();
	if (!e)
		return 0;
	e->kind = LEASH_EV_EXIT;
	e->mode = s->mode;
	e->flags = p->exit_code;
	submit(e);
	return 0;
}

/* ---- The LSM tier: loaded only where the kernel runs BPF LSM. ---- */

#define EACCES 13
#define FMODE_WRITE 0x2
#define FMODE_EXEC 0x20

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LEASH_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct leash_path_lpm);
	__type(value, struct leash_verdict);
} files_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LEASH_MAX_RULES);
	__type(key, struct leash_path_exact);
	__type(value, struct leash_verdict);
} files_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LEASH_MAX_SESSIONS * 4);
	__type(key, struct leash_file_default);
	__type(value, struct leash_verdict);
} files_default SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LEASH_MAX_RULES);
	__type(key, struct leash_inode_key);
	__type(value, struct leash_ident);
} inodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LEASH_MAX_RULES);
	__type(key, struct leash_entry_key);
	__type(value, struct leash_ident);
} entries SEC(".maps");

struct scratch {
	struct leash_path_exact exact;
	struct leash_path_lpm lpm;
	struct leash_entry_key entry;
	/* The path as resolved (`full_len` with its NUL), and what an
	 * identity denial was traced to (`traced_ino` 0: nothing). */
	char full[LEASH_FULL_PATH];
	__s64 full_len;
	__u64 traced_dev;
	__u64 traced_ino;
	__u32 traced_depth;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* What the LSM tier saw: [0] governed opens and execs decided, [1] paths
 * not resolved, [2] exact hits, [3] prefix hits, [4] defaults. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 5);
	__type(key, __u32);
	__type(value, __u64);
} lsm_stats SEC(".maps");

static __always_inline void lsm_count(__u32 i)
{
	__u64 *n = bpf_map_lookup_elem(&lsm_stats, &i);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* The verdict for a path: the exact file, else the longest directory
 * prefix, else the table's default; no default denies. */
static __always_inline __u32 decide_file(struct leash_session *s, __u32 action, struct path *p)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	if (!sc)
		return LEASH_VERDICT_PRESENT;
	lsm_count(0);
	sc->traced_ino = 0;
	long n = bpf_d_path(p, sc->full, sizeof(sc->full));
	sc->full_len = n;
	if (n <= 1) {
		lsm_count(1);
		sc->exact.path[0] = 0;
		return LEASH_VERDICT_PRESENT; /* no path: denied */
	}
	/* d_path builds the path at the buffer's end and moves it to the front:
	 * the bytes after the NUL are left over, and the key must be zero-padded.
	 * A path longer than the exact keys (255 bytes) is no exact key, and
	 * its first LEASH_LPM_PATH bytes decide every prefix the tables have
	 * (none is longer). */
	bpf_probe_read_kernel(sc->exact.path, LEASH_PATH_MAX, sc->full);
	for (int i = 0; i < LEASH_PATH_MAX; i++) {
		if (i >= n)
			sc->exact.path[i] = 0;
	}
	sc->exact.path[LEASH_PATH_MAX - 1] = 0;
	sc->exact.slot = s->slot;
	sc->exact.action = action;
	struct leash_verdict *v = n <= LEASH_PATH_MAX ? bpf_map_lookup_elem(&files_exact, &sc->exact) : 0;
	if (v) {
		lsm_count(2);
		return v->v;
	}
	sc->lpm.slot = s->slot;
	sc->lpm.action = action;
	__builtin_memcpy(sc->lpm.path, sc->exact.path, LEASH_LPM_PATH);
	__u32 len = n - 1; /* without the NUL */
	if (len > LEASH_LPM_PATH)
		len = LEASH_LPM_PATH;
	sc->lpm.prefixlen = 64 + len * 8;
	v = bpf_map_lookup_elem(&files_lpm, &sc->lpm);
	if (v) {
		lsm_count(3);
		return v->v;
	}
	lsm_count(4);
	struct leash_file_default k = {.slot = s->slot, .action = action};
	v = bpf_map_lookup_elem(&files_default, &k);
	return v ? v->v : LEASH_VERDICT_PRESENT;
}

/* Ancestors looked at, the file's own directory first. */
#define LEASH_ANCESTORS 24

/* What the tables deny `action` on by identity: the file (`below` = 0)
 * itself, or the nearest guarded directory above it; 0 when nothing does,
 * or when an exception the tables allow is nearer. A link or rename of a
 * guarded file or directory keeps its identity. */
static __always_inline __u32 identity_denies(struct leash_session *s, __u32 action, struct dentry *d, int below)
{
	struct leash_inode_key k = {.slot = s->slot};
	__u32 bit = 1u << action;
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	if (sc)
		sc->traced_ino = 0;
	for (int i = 0; i < LEASH_ANCESTORS; i++) {
		struct inode *in = BPF_CORE_READ(d, d_inode);
		if (in) {
			k.dev = BPF_CORE_READ(in, i_sb, s_dev);
			k.ino = BPF_CORE_READ(in, i_ino);
			struct leash_ident *v = bpf_map_lookup_elem(&inodes, &k);
			if (v && (v->deny & bit) && (!below || (v->deny & LEASH_IDENT_BELOW))) {
				if (sc) {
					sc->traced_dev = k.dev;
					sc->traced_ino = k.ino;
					sc->traced_depth = i;
				}
				return LEASH_VERDICT_PRESENT | (v->reason << 8);
			}
			/* The nearest answer wins: an exception the tables allow. */
			if (v && (v->deny & (bit << LEASH_IDENT_ALLOW_SHIFT)))
				return 0;
		}
		struct dentry *parent = BPF_CORE_READ(d, d_parent);
		if (!parent || parent == d)
			break;
		d = parent;
		below = 1;
	}
	return 0;
}

/* Whether the tables forbid a write of the entry `child` in `dir` (a name
 * to make appear, or one to change): by the entry's own name there, or
 * by a directory above it; returns the verdict, 0 when nothing forbids. */
static __always_inline __u32 entry_denies(struct leash_session *s, struct dentry *dir, struct dentry *child)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	if (!sc)
		return LEASH_VERDICT_PRESENT;
	struct inode *di = BPF_CORE_READ(dir, d_inode);
	if (!di)
		return LEASH_VERDICT_PRESENT;
	__builtin_memset(sc->entry.name, 0, sizeof(sc->entry.name));
	sc->entry.slot = s->slot;
	sc->entry.pad = 0;
	sc->entry.dev = BPF_CORE_READ(di, i_sb, s_dev);
	sc->entry.ino = BPF_CORE_READ(di, i_ino);
	const unsigned char *name = BPF_CORE_READ(child, d_name.name);
	bpf_probe_read_kernel_str(sc->entry.name, sizeof(sc->entry.name), name);
	struct leash_ident *v = bpf_map_lookup_elem(&entries, &sc->entry);
	if (v && (v->deny & (1u << LEASH_FILE_WRITE)))
		return LEASH_VERDICT_PRESENT | (v->reason << 8);
	return identity_denies(s, LEASH_FILE_WRITE, dir, 1);
}

/* The path's verdict; an allowed one is denied still when the file, or a
 * directory above it, is one the tables deny `action` on under another
 * name (a link, a rename). */
static __always_inline __u32 decide_with_identity(struct leash_session *s, __u32 action, const struct path *p)
{
	__u32 v = decide_file(s, action, (struct path *)p);
	if (!(v & LEASH_VERDICT_ALLOW))
		return v;
	__u32 traced = identity_denies(s, action, BPF_CORE_READ(p, dentry), 0);
	return traced ? traced : v;
}

/* Files already reported allowed, per slot and action: an allow is
 * reported once per file until the tables change (a new slot), as the
 * fallback tier's cache does; a denial is reported every time. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct leash_reported_key);
	__type(value, __u8);
} lsm_reported SEC(".maps");

/* The session of the current task when the LSM tier decides `action` for
 * it (else 0: not governed, or fanotify decides it). In record mode it
 * decides and reports, and refuses nothing. */
static __always_inline struct leash_session *lsm_governed(__u32 action)
{
	struct leash_session *s = governed();
	if (!s || !(s->lsm_files & (1u << action)))
		return 0;
	return s;
}

/* Reports a decision and answers it: the path the decision resolved (in
 * the scratch), or the entry's `name` when the hook had no path. */
static __always_inline int lsm_verdict(struct leash_session *s, __u32 kind, __u32 action, __u32 verdict,
				       const unsigned char *name)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	int long_path = !name && sc && sc->full_len > LEASH_PATH_MAX;
	struct leash_event_long *l = long_path ? reserve_long() : 0;
	struct leash_event *e = long_path ? (l ? &l->e : 0) : reserve();
	if (e) {
		e->kind = kind;
		e->mode = s->mode;
		e->verdict = verdict;
		e->flags = action | LEASH_EV_LSM;
		if (name) {
			e->flags |= LEASH_EV_NAME_ONLY;
			bpf_probe_read_kernel_str(e->path, sizeof(e->path), name);
		} else if (sc) {
			__builtin_memcpy(e->path, sc->exact.path, LEASH_PATH_MAX);
			if (l) {
				e->flags |= LEASH_EV_LONG_PATH;
				bpf_probe_read_kernel(l->full, sizeof(l->full), sc->full);
			}
			if (!(verdict & LEASH_VERDICT_ALLOW) && sc->traced_ino) {
				e->flags |= LEASH_EV_TRACED;
				__builtin_memcpy(e->addr, &sc->traced_dev, 8);
				__builtin_memcpy(e->addr + 8, &sc->traced_ino, 8);
				e->port = sc->traced_depth;
			}
		}
		submit(e);
	}
	if (s->mode == LEASH_MODE_ENFORCE && !(verdict & LEASH_VERDICT_ALLOW))
		return -EACCES;
	return 0;
}

/* Renames anywhere, counted (see `lsm_allowed`). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lsm_renames SEC(".maps");

/* An opened name, as the kernel holds it: the dentry (one name of a
 * file) on a mount. */
struct leash_opened_key {
	__u32 slot;
	__u32 action;
	__u64 dentry;
	__u64 mnt;
};

/* What an allow was decided for: the dentry's parent and name, its
 * inode, and the renames counted before it was decided. */
struct leash_opened {
	__u64 parent;
	__u64 hash_len;
	__u64 inode;
	__u64 ino;
	__u64 renames;
	__u32 generation;
	__u32 pad;
};

/* Allowed opens, per slot and action, kept from a file's second allowed
 * open on (`lsm_file_verdict`): the next open of the same name on
 * the same mount, while its dentry still has that parent, name and inode
 * and nothing anywhere was renamed since, is allowed without resolving its
 * path again. An allow answers only for the name it was decided for: a
 * link is another dentry (decided afresh); a rename of the name changes
 * its parent or name; a rename of a directory above it changes neither,
 * so any rename (counted by path_rename, for every process) ends every
 * cached allow. A new slot (the tables changed) is another key. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct leash_opened_key);
	__type(value, struct leash_opened);
} lsm_allowed SEC(".maps");

static __always_inline __u64 renames_so_far(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lsm_renames, &zero);
	return n ? *n : 0;
}

/* The opened name as it is now, with the renames counted so far. */
static __always_inline void opened_now(struct file *file, __u64 renames, struct leash_opened *o)
{
	struct dentry *d = BPF_CORE_READ(file, f_path.dentry);
	struct inode *in = BPF_CORE_READ(file, f_inode);
	o->renames = renames;
	o->parent = (__u64)BPF_CORE_READ(d, d_parent);
	o->hash_len = BPF_CORE_READ(d, d_name.hash_len);
	o->inode = (__u64)in;
	o->ino = BPF_CORE_READ(in, i_ino);
	o->generation = BPF_CORE_READ(in, i_generation);
	o->pad = 0;
}

/* A decision on an opened file: an allow already reported for this file
 * passes silently. */
static __always_inline int lsm_file_verdict(struct leash_session *s, __u32 kind, __u32 action, struct file *file)
{
	struct leash_opened_key ok = {.slot = s->slot, .action = action};
	ok.dentry = (__u64)BPF_CORE_READ(file, f_path.dentry);
	ok.mnt = (__u64)BPF_CORE_READ(file, f_path.mnt);
	/* Counted before anything is read or decided: a rename from here on
	 * makes what is kept now stale at once. */
	struct leash_opened now;
	opened_now(file, renames_so_far(), &now);
	struct leash_opened *was = bpf_map_lookup_elem(&lsm_allowed, &ok);
	if (was) {
		/* One branch, and the same stack whichever way: the verifier
		 * then walks the decision below once, not once per field. */
		__u64 differ = (was->renames ^ now.renames) | (was->parent ^ now.parent) |
			       (was->hash_len ^ now.hash_len) | (was->inode ^ now.inode) | (was->ino ^ now.ino) |
			       (__u64)(was->generation ^ now.generation);
		if (!differ)
			return 0;
	}
	__u32 verdict = decide_with_identity(s, action, &file->f_path);
	if (verdict & LEASH_VERDICT_ALLOW) {
		struct leash_reported_key k = {.slot = s->slot, .action = action};
		k.dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
		k.ino = BPF_CORE_READ(file, f_inode, i_ino);
		__u8 one = 1;
		if (bpf_map_update_elem(&lsm_reported, &k, &one, BPF_NOEXIST) != 0) {
			/* Allowed before, and opened again: worth keeping (a file
			 * created, read once and removed, as an install makes by the
			 * thousand, never costs an entry). */
			bpf_map_update_elem(&lsm_allowed, &ok, &now, BPF_ANY);
			return 0;
		}
	}
	return lsm_verdict(s, kind, action, verdict, 0);
}

SEC("lsm/file_open")
int BPF_PROG(leash_lsm_file_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	__u32 mode = BPF_CORE_READ(file, f_mode);
	if (mode & FMODE_EXEC)
		return 0; /* the exec is decided in bprm_check_security */
	__u32 action = (mode & FMODE_WRITE) ? LEASH_FILE_WRITE : LEASH_FILE_READ;
	struct leash_session *s = lsm_governed(action);
	if (!s)
		return 0;
	return lsm_file_verdict(s, LEASH_EV_OPEN, action, file);
}

/* Every exec, execveat included (both pass here with the file to run). */
SEC("lsm/bprm_check_security")
int BPF_PROG(leash_lsm_bprm, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	struct leash_session *s = lsm_governed(LEASH_FILE_EXEC);
	if (!s)
		return 0;
	return lsm_file_verdict(s, LEASH_EV_EXEC, LEASH_FILE_EXEC, bprm->file);
}

#define PROT_EXEC 0x4

/* Code mapped from a file is an exec of it: the dynamic loader run
 * directly (`ld.so PROG`) maps the program without any execve. */
static __always_inline int mapped_exec(struct file *file, unsigned long prot)
{
	if (!file || !(prot & PROT_EXEC))
		return 0;
	struct leash_session *s = lsm_governed(LEASH_FILE_EXEC);
	if (!s)
		return 0;
	return lsm_file_verdict(s, LEASH_EV_EXEC, LEASH_FILE_EXEC, file);
}

SEC("lsm/mmap_file")
int BPF_PROG(leash_lsm_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot, unsigned long flags)
{
	return mapped_exec(file, prot);
}

/* Made executable later: bpf_d_path is not allowed here, so by identity
 * alone (the files and directories the tables forbid to execute). */
SEC("lsm/file_mprotect")
int BPF_PROG(leash_lsm_file_mprotect, struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot)
{
	if (!(prot & PROT_EXEC))
		return 0;
	struct file *file = BPF_CORE_READ(vma, vm_file);
	if (!file)
		return 0;
	struct leash_session *s = lsm_governed(LEASH_FILE_EXEC);
	if (!s)
		return 0;
	struct dentry *d = BPF_CORE_READ(file, f_path.dentry);
	__u32 v = identity_denies(s, LEASH_FILE_EXEC, d, 0);
	return v ? lsm_verdict(s, LEASH_EV_EXEC, LEASH_FILE_EXEC, v, BPF_CORE_READ(d, d_name.name)) : 0;
}

/* Calls that make a name appear or change a file without opening it: a
 * write of the entry, decided by identity (the path hooks cannot resolve
 * paths: bpf_d_path is not allowed there). */
static __always_inline int written(struct dentry *dir, struct dentry *child, struct dentry *target)
{
	struct leash_session *s = lsm_governed(LEASH_FILE_WRITE);
	if (!s)
		return 0;
	__u32 v = entry_denies(s, dir, child);
	if (!v && target)
		v = identity_denies(s, LEASH_FILE_WRITE, target, 0);
	if (!v)
		return 0;
	return lsm_verdict(s, LEASH_EV_OPEN, LEASH_FILE_WRITE, v, BPF_CORE_READ(child, d_name.name));
}

SEC("lsm/path_mknod")
int BPF_PROG(leash_lsm_path_mknod, const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev)
{
	/* Also every open that creates a regular file. */
	return written(BPF_CORE_READ(dir, dentry), dentry, 0);
}

SEC("lsm/path_symlink")
int BPF_PROG(leash_lsm_path_symlink, const struct path *dir, struct dentry *dentry, const char *old_name)
{
	return written(BPF_CORE_READ(dir, dentry), dentry, 0);
}

SEC("lsm/path_link")
int BPF_PROG(leash_lsm_path_link, struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry)
{
	return written(BPF_CORE_READ(new_dir, dentry), new_dentry, 0);
}

SEC("lsm/path_rename")
int BPF_PROG(leash_lsm_path_rename, const struct path *old_dir, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, unsigned int flags)
{
	/* Counted for every process: a cached allow is for a name, which a
	 * rename of a directory above it changes (see `lsm_allowed`). */
	__u32 zero = 0;
	__u64 *renames = bpf_map_lookup_elem(&lsm_renames, &zero);
	if (renames)
		__sync_fetch_and_add(renames, 1);
	/* The name that goes away and the one that appears; the file or
	 * directory moved, by identity (a guarded directory moves all below). */
	int r = written(BPF_CORE_READ(old_dir, dentry), old_dentry, old_dentry);
	if (r)
		return r;
	return written(BPF_CORE_READ(new_dir, dentry), new_dentry, 0);
}

/* A change of an existing file: its entry, its identity, and what is above it. */
static __always_inline int changed(const struct path *path)
{
	struct dentry *d = BPF_CORE_READ(path, dentry);
	return written(BPF_CORE_READ(d, d_parent), d, d);
}

SEC("lsm/path_chmod")
int BPF_PROG(leash_lsm_path_chmod, const struct path *path, umode_t mode)
{
	return changed(path);
}

SEC("lsm/path_chown")
int BPF_PROG(leash_lsm_path_chown, const struct path *path, __u32 uid, __u32 gid)
{
	return changed(path);
}

SEC("lsm/path_truncate")
int BPF_PROG(leash_lsm_path_truncate, const struct path *path)
{
	return changed(path);
}

/* Decides a destination for the LSM hooks; 0 or -EACCES. */
static __always_inline int lsm_destination(struct leash_session *s, struct sockaddr *address, int addrlen, __u32 kind)
{
	__u16 family = BPF_CORE_READ(address, sa_family);
	__u8 addr[16] = {};
	__u16 port;
	int v4 = 1;
	if (family == AF_INET && addrlen >= (int)sizeof(struct sockaddr_in)) {
		struct sockaddr_in sin = {};
		bpf_probe_read_kernel(&sin, sizeof(sin), address);
		addr[10] = 0xff;
		addr[11] = 0xff;
		__builtin_memcpy(addr + 12, &sin.sin_addr.s_addr, 4);
		port = bpf_ntohs(sin.sin_port);
	} else if (family == AF_INET6 && addrlen >= (int)sizeof(struct sockaddr_in6)) {
		struct sockaddr_in6 sin6 = {};
		bpf_probe_read_kernel(&sin6, sizeof(sin6), address);
		__builtin_memcpy(addr, &sin6.sin6_addr, 16);
		v4 = ipv4_mapped(addr);
		port = bpf_ntohs(sin6.sin6_port);
	} else {
		return 0;
	}
	return refuse_destination(s, kind, addr, v4, port, 0) ? -EACCES : 0;
}

SEC("lsm/socket_connect")
int BPF_PROG(leash_lsm_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	if (ret)
		return ret;
	struct leash_session *s = governed();
	if (!s || s->mode == LEASH_MODE_RECORD)
		return 0;
	return lsm_destination(s, address, addrlen, LEASH_EV_CONNECT);
}

/* A datagram with its own destination (a connected socket was decided at
 * connect). */
SEC("lsm/socket_sendmsg")
int BPF_PROG(leash_lsm_sendmsg, struct socket *sock, struct msghdr *msg, int size, int ret)
{
	if (ret)
		return ret;
	struct leash_session *s = governed();
	if (!s || s->mode == LEASH_MODE_RECORD)
		return 0;
	struct sockaddr *name = BPF_CORE_READ(msg, msg_name);
	int namelen = BPF_CORE_READ(msg, msg_namelen);
	if (!name || namelen <= 0)
		return 0;
	return lsm_destination(s, name, namelen, LEASH_EV_SENDMSG);
}
