// SPDX-License-Identifier: MIT OR GPL-2.0-only
//
// aoe_steer: the XDP program of xblade.
//
// Steers ATA-over-Ethernet frames (EtherType 0x88A2) into the AF_XDP socket
// bound to the receiving queue, and leaves every other frame to the kernel
// stack. It reads only the linear Ethernet header plus the AoE ver/flags
// byte, so it is safe as an `xdp.frags` (multi-buffer) program at jumbo MTU.
//
//   EtherType != 0x88A2                  -> XDP_PASS      (counter "passed")
//   AoE, too short for the flags byte    -> XDP_DROP      (counter "dropped")
//   AoE, R flag != config.want_response  -> XDP_DROP      (counter "dropped")
//   AoE, F_CHECK_SOURCE and the source is a group (multicast/broadcast)
//        or the all-zero address          -> XDP_DROP      (counter "bad_address")
//   AoE, F_CHECK_DEST and the destination is neither config.local_mac
//        nor broadcast                    -> XDP_DROP      (counter "bad_address")
//   AoE, F_ACL and the source is not a key of the acl map
//                                         -> XDP_DROP      (counter "denied")
//   AoE, wanted                          -> xsks[rx_queue_index]
//        a socket is registered on that queue   (counter "redirected")
//        no socket on that queue: XDP_PASS      (counter "passed")
//
// want_response is 0 in the target role (take requests; our own responses
// reflected back by a netns or loopback are dropped) and 1 in the
// initiator role (take responses).
//
// The acl map holds the source MACs that may reach the AF_XDP sockets when
// F_ACL is set: the union of the MAC lists of the exports served on this
// interface. Without F_ACL every source passes (some export serves anyone,
// and the worker decides per export).
//
// The loader (ebpf/src/lib.rs) knows the map names, the counter indices and
// the config layout below; keep the two in sync.
//
// No libbpf headers on purpose: everything the program uses is declared here.
// Rebuild the committed object with `cargo xtask ebpf`.

typedef unsigned char __u8;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) __typeof__(val) *name

// include/uapi/linux/bpf.h
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_XSKMAP 17

enum xdp_action {
	XDP_ABORTED = 0,
	XDP_DROP,
	XDP_PASS,
	XDP_TX,
	XDP_REDIRECT,
};

struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

// Helper ids from `enum bpf_func_id`.
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;

#define ETH_HLEN 14
#define AOE_ETHERTYPE_HI 0x88
#define AOE_ETHERTYPE_LO 0xA2
#define AOE_FLAG_RESPONSE 0x08

// Counter indices; the loader reads them by these numbers.
#define CNT_REDIRECTED 0
#define CNT_DROPPED 1
#define CNT_PASSED 2
#define CNT_DENIED 3
#define CNT_BAD_ADDRESS 4
#define CNT_MAX 5

// config.flags bits.
#define F_CHECK_SOURCE 0x1 // drop group and all-zero source MACs
#define F_CHECK_DEST 0x2   // drop destinations other than local_mac and broadcast
#define F_ACL 0x4          // drop sources that are not in the acl map

// Entries of the acl map.
#define ACL_MAX 1024

// One AF_XDP socket per RX queue, keyed by queue id.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// The loader writes entry 0 of `config`; 16 bytes, host (little) endian.
struct steer_config {
	__u32 want_response; // 0 = target role, 1 = initiator role
	__u32 flags;         // F_*
	__u8 local_mac[6];   // the interface's MAC, for F_CHECK_DEST
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_config);
} config SEC(".maps");

// The source MACs allowed when F_ACL is set. The value is unused (1).
struct mac_key {
	__u8 addr[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ACL_MAX);
	__type(key, struct mac_key);
	__type(value, __u32);
} acl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __attribute__((always_inline)) void count(__u32 idx)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &idx);

	if (value)
		*value += 1; // per-CPU slot: no atomics needed
}

// Byte by byte: the Ethernet header need not be aligned.
static __attribute__((always_inline)) int mac_equal(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) |
		(a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

static __attribute__((always_inline)) int mac_broadcast(const __u8 *a)
{
	return (a[0] & a[1] & a[2] & a[3] & a[4] & a[5]) == 0xff;
}

static __attribute__((always_inline)) int mac_zero(const __u8 *a)
{
	return (a[0] | a[1] | a[2] | a[3] | a[4] | a[5]) == 0;
}

// Whether the program's config lets this AoE frame (Ethernet header at
// `eth`, at least ETH_HLEN bytes) through: address hygiene, then the ACL.
// Returns the counter to bump when it does not, or CNT_MAX when it does.
static __attribute__((always_inline)) __u32 check_addresses(const struct steer_config *cfg,
							    const __u8 *eth)
{
	const __u8 *dst = eth;
	const __u8 *src = eth + 6;
	struct mac_key key;

	// A group source (I/G bit) is never a sender; all-zero is no one. A
	// reply to either would be a reflector.
	if ((cfg->flags & F_CHECK_SOURCE) && ((src[0] & 1) || mac_zero(src)))
		return CNT_BAD_ADDRESS;
	if ((cfg->flags & F_CHECK_DEST) && !mac_equal(dst, cfg->local_mac) && !mac_broadcast(dst))
		return CNT_BAD_ADDRESS;
	if (cfg->flags & F_ACL) {
		__builtin_memcpy(key.addr, src, 6);
		if (!bpf_map_lookup_elem(&acl, &key))
			return CNT_DENIED;
	}
	return CNT_MAX;
}

SEC("xdp.frags")
int aoe_steer(struct xdp_md *ctx)
{
	const __u8 *data = (const __u8 *)(unsigned long)ctx->data;
	const __u8 *data_end = (const __u8 *)(unsigned long)ctx->data_end;
	__u32 zero = 0;
	const struct steer_config *cfg;
	__u32 is_response;
	__u32 verdict;
	long action;

	if (data + ETH_HLEN > data_end ||
	    data[12] != AOE_ETHERTYPE_HI || data[13] != AOE_ETHERTYPE_LO) {
		count(CNT_PASSED);
		return XDP_PASS;
	}
	// The host has no AoE stack: a truncated AoE frame is of no use to anyone.
	if (data + ETH_HLEN + 1 > data_end) {
		count(CNT_DROPPED);
		return XDP_DROP;
	}

	is_response = (data[ETH_HLEN] & AOE_FLAG_RESPONSE) ? 1 : 0;
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || is_response != cfg->want_response) {
		count(CNT_DROPPED);
		return XDP_DROP;
	}
	verdict = check_addresses(cfg, data);
	if (verdict != CNT_MAX) {
		count(verdict);
		return XDP_DROP;
	}

	// The low bits of flags are the action when the slot is empty, so the
	// frame goes to the stack until a socket is registered on this queue.
	action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	count(action == XDP_REDIRECT ? CNT_REDIRECTED : CNT_PASSED);
	return action;
}

char _license[] SEC("license") = "Dual MIT/GPL";
