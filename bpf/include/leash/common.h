/* Shared between the sensor's BPF programs and its user space (the Rust
 * side mirrors these layouts in crates/leash-sensor/src/bpf.rs and
 * event.rs; tests check the sizes and offsets). */
#ifndef LEASH_COMMON_H
#define LEASH_COMMON_H

#define LEASH_MAX_SESSIONS 1024
#define LEASH_MAX_RULES 16384
#define LEASH_PATH_MAX 256
#define LEASH_COMM_LEN 16

/* Modes, as leash-core's Mode. */
#define LEASH_MODE_RECORD 0
#define LEASH_MODE_SHADOW 1
#define LEASH_MODE_ENFORCE 2

/* Event kinds. */
#define LEASH_EV_CONNECT 1
#define LEASH_EV_SENDMSG 2
#define LEASH_EV_OPEN 3
#define LEASH_EV_EXEC 4
#define LEASH_EV_ICMP 5
#define LEASH_EV_FORK 6  /* pid: the child; ppid: its parent */
#define LEASH_EV_EXIT 7  /* flags: the exit code as wait() reports it */

/* Verdict flags. */
#define LEASH_VERDICT_ALLOW 1
#define LEASH_VERDICT_PRESENT 2
#define LEASH_VERDICT_PROXY 8  /* let through to leash-proxy's redirect, which decides by name */
#define LEASH_VERDICT_GUARD 4  /* a guard of leash's own (local addresses, resolvers): decides even under `evaluate` */

/* A governed session, by the cgroup id of its container. */
struct leash_session {
	__u32 slot;      /* index that scopes the session's table entries */
	__u32 mode;      /* LEASH_MODE_* */
	__u32 default4;  /* LEASH_VERDICT_* | reason << 8: when nothing matches (IPv4) */
	__u32 default6;  /* the same for IPv6 */
	__u32 evaluate;  /* the table cannot decide: every connect but the guards' is allowed and reported for user space */
	__u32 generation;
	__u32 proxied;   /* leash-proxy intercepts TCP 80/443: what no table entry names goes to the redirect */
	__u32 lsm_files; /* 1 << LEASH_FILE_*: the file actions the LSM tier decides for this session (fanotify the rest) */
};

/* A table entry's verdict: LEASH_VERDICT_* | reason << 8. */
struct leash_verdict {
	__u32 v;
};

/* LPM keys: the slot's 32 bits lead, so prefixlen = 32 + address prefix. */
struct leash_lpm4 {
	__u32 prefixlen;
	__u32 slot;
	__u8 addr[4];
};

struct leash_lpm6 {
	__u32 prefixlen;
	__u32 slot;
	__u8 addr[16];
};

/* An exact address and port (IPv4 addresses are IPv4-mapped IPv6). */
struct leash_port_key {
	__u32 slot;
	__u16 port;
	__u16 pad;
	__u8 addr[16];
};

/* File actions of the LSM tier's tables. */
#define LEASH_FILE_READ 1
#define LEASH_FILE_WRITE 2
#define LEASH_FILE_EXEC 3

/* An LPM trie key's data is at most 256 bytes: slot, action, then the path. */
#define LEASH_LPM_PATH 248

/* A directory prefix of the LSM tier's file tables. */
struct leash_path_lpm {
	__u32 prefixlen;
	__u32 slot;
	__u32 action;
	char path[LEASH_LPM_PATH];
};

/* An exact file of the LSM tier's file tables (the path zero-padded). */
struct leash_path_exact {
	__u32 slot;
	__u32 action;
	char path[LEASH_PATH_MAX];
};

/* A table's default, per slot and action. */
struct leash_file_default {
	__u32 slot;
	__u32 action;
};

/* A file or directory by identity: the kernel's device number
 * (MKDEV(major, minor)) and inode, under a session slot. */
struct leash_inode_key {
	__u32 slot;
	__u32 pad;
	__u64 dev;
	__u64 ino;
};

/* What the tables deny on a file or directory under any of its names:
 * bit 1 << LEASH_FILE_* per action; LEASH_IDENT_BELOW: also on everything
 * below the directory. */
#define LEASH_IDENT_BELOW 0x100
/* (1 << LEASH_FILE_*) << LEASH_IDENT_ALLOW_SHIFT: the tables allow the
 * action here (an exception below a denied directory): the walk up stops. */
#define LEASH_IDENT_ALLOW_SHIFT 16
struct leash_ident {
	__u32 deny;
	__u32 reason;
};

/* A directory entry by its directory's identity and its name (the first
 * LEASH_NAME_MAX bytes, zero-padded): a name the tables forbid to make
 * appear there, whether or not it exists yet. */
#define LEASH_NAME_MAX 64
struct leash_entry_key {
	__u32 slot;
	__u32 pad;
	__u64 dev;
	__u64 ino;
	char name[LEASH_NAME_MAX];
};

/* An LSM tier event's flags: the LEASH_FILE_* action in the low byte, and: */
#define LEASH_EV_LSM 0x200       /* decided by the LSM tier */
#define LEASH_EV_NAME_ONLY 0x100 /* `path` is the entry's name alone (the path hooks cannot resolve paths) */
#define LEASH_EV_TRACED 0x400    /* denied by identity: `addr` holds the dev and ino of the file or directory
				  * the tables forbid by another name, `port` how far below it the file is */
#define LEASH_EV_LONG_PATH 0x800 /* a `struct leash_event_long`: the whole path follows the event */

/* The longest path the LSM tier resolves (the kernel's PATH_MAX). */
#define LEASH_FULL_PATH 4096

/* A file reported allowed under a slot, so that each is reported once. */
struct leash_reported_key {
	__u32 slot;
	__u32 action;
	__u64 dev;
	__u64 ino;
};

/* One event, as the ring buffer carries it. */
struct leash_event {
	__u64 time_ns;
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 kind;      /* LEASH_EV_* */
	__u32 verdict;   /* LEASH_VERDICT_* | reason << 8 as decided */
	__u32 mode;
	__u32 flags;     /* open flags, or the socket type for connect/sendmsg */
	__u32 family;    /* AF_INET / AF_INET6 */
	__u16 port;
	__u16 pad;
	__u8 addr[16];
	char comm[LEASH_COMM_LEN];
	char path[LEASH_PATH_MAX];
};

/* An event whose path is longer than `path` holds. */
struct leash_event_long {
	struct leash_event e;
	char full[LEASH_FULL_PATH];
};

#endif
