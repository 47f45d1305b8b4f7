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
//   AoE, R flag == config.want_response  -> xsks[rx_queue_index]
//        a socket is registered on that queue   (counter "redirected")
//        no socket on that queue: XDP_PASS      (counter "passed")
//
// want_response is 0 in the target role (take requests; our own responses
// reflected back by a netns or loopback are dropped) and 1 in the
// initiator role (take responses).
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
#define CNT_MAX 3

// One AF_XDP socket per RX queue, keyed by queue id.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Entry 0: want_response (0 = target role, 1 = initiator role).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

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

SEC("xdp.frags")
int aoe_steer(struct xdp_md *ctx)
{
	const __u8 *data = (const __u8 *)(unsigned long)ctx->data;
	const __u8 *data_end = (const __u8 *)(unsigned long)ctx->data_end;
	__u32 zero = 0;
	__u32 *want_response;
	__u32 is_response;
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
	want_response = bpf_map_lookup_elem(&config, &zero);
	if (!want_response || is_response != *want_response) {
		count(CNT_DROPPED);
		return XDP_DROP;
	}

	// The low bits of flags are the action when the slot is empty, so the
	// frame goes to the stack until a socket is registered on this queue.
	action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	count(action == XDP_REDIRECT ? CNT_REDIRECTED : CNT_PASSED);
	return action;
}

char _license[] SEC("license") = "Dual MIT/GPL";
