#!/usr/bin/env bash
# tune-nic.sh: show and tune a network interface for xblade (ATA over Ethernet on XDP/AF_XDP).
#
# With only an interface name it shows the settings that matter for AoE and what to change;
# options change them. --dry-run prints the commands instead of running them. Every change is
# printed as the command that makes it ("+ ethtool ..."), so the output is also a record.
#
# What it tunes, and why:
#   --channels N   NIC queues. xblade runs one worker per queue it is told to serve.
#   --rings N|max  RX/TX descriptor ring sizes: bigger rings absorb bursts from many initiators.
#   --no-pause     Ethernet flow control off. A pause frame stops the whole link, for every
#                  initiator at once; AoE paces itself (the target advertises a buffer count and
#                  initiators keep a window), so pause frames only add stalls.
#   --mtu N        e.g. 9000 (jumbo frames): more sectors per AoE frame. Every port on the path
#                  and every initiator must use the same MTU.
#   --steer MAC=Q  AoE is not IP, so RSS hashes every AoE frame to one queue. An ntuple rule per
#                  initiator MAC spreads initiators over queues: `ethtool -N IFACE flow-type
#                  ether src MAC proto 0x88a2 action Q`.
#
# Settings made with ethtool do not survive a reboot or a driver reload: put the same commands
# in your network configuration (ifupdown post-up, a systemd-networkd .link file, or a oneshot
# unit before xblade.service). Changing channels or MTU while xblade runs can reset the NIC's
# queues under it: stop xblade first.
#
# Needs ethtool and iproute2, and root (or CAP_NET_ADMIN) unless --dry-run.
# ETHTOOL=/path/to/ethtool overrides the ethtool binary.
set -euo pipefail

readonly AOE_ETHERTYPE=0x88a2
# AoE header (10) + ATA header (12) inside the MTU; sectors are 512 bytes.
readonly AOE_HEADERS=22
readonly AOE_MIN_MTU=1042
ETHTOOL=${ETHTOOL:-ethtool}

usage() {
    cat <<'EOF'
usage: tune-nic.sh [options] IFACE

Shows IFACE's queues, rings, flow control, MTU and ntuple rules; options change them.

  --channels N         use N queues (combined channels, else N RX + N TX)
  --rings N|max        RX and TX ring size (max: the NIC's maximum)
  --no-pause           turn Ethernet flow control (pause frames) off
  --mtu N              set the MTU (e.g. 9000; the whole path must match)
  --up                 set the link up (AoE needs no IP address, just the link)
  --steer MAC=QUEUE    steer AoE frames from initiator MAC to QUEUE (repeat per initiator)
  --steer-any-proto    match the source MAC only, for NICs that cannot also match the
                       EtherType (then ALL traffic from that MAC goes to QUEUE)
  --clear-steer        delete the AoE steering rules (Raw Ethernet, EtherType 0x88a2)
  --dry-run, -n        print the commands that would change settings; change nothing
  -h, --help           this help

examples:
  tune-nic.sh eth1                                   # show
  tune-nic.sh --dry-run --channels 2 --rings max --no-pause --mtu 9000 \
      --steer 02:00:00:00:00:01=0 --steer 02:00:00:00:00:02=1 eth1
EOF
}

die() {
    printf 'tune-nic.sh: error: %s\n' "$*" >&2
    exit 1
}

usage_error() {
    printf 'tune-nic.sh: %s (see --help)\n' "$*" >&2
    exit 2
}

warn() {
    printf 'warning: %s\n' "$*" >&2
}

dry_run=0
channels=""
rings=""
no_pause=0
mtu=""
set_up=0
match_proto=1
clear_steer=0
steers=()

# True if $1 is a whole number in [$2, $3].
in_range() {
    [[ $1 =~ ^[0-9]{1,7}$ ]] && ((10#$1 >= $2 && 10#$1 <= $3))
}

while (($# > 0)); do
    opt=$1
    value=""
    case $opt in
        --*=*)
            value=${opt#*=}
            opt=${opt%%=*}
            ;;
    esac
    case $opt in
        --channels | --rings | --mtu | --steer)
            if [[ -z $value ]]; then
                (($# >= 2)) || usage_error "$opt needs a value"
                value=$2
                shift
            fi
            ;;
    esac
    case $opt in
        --dry-run | -n) dry_run=1 ;;
        --channels)
            in_range "$value" 1 4096 || usage_error "--channels $value: expected a number from 1 to 4096"
            channels=$((10#$value))
            ;;
        --rings)
            [[ $value == max ]] || in_range "$value" 1 1000000 || usage_error "--rings $value: expected a number or max"
            rings=$value
            ;;
        --no-pause) no_pause=1 ;;
        --mtu)
            in_range "$value" 68 65535 || usage_error "--mtu $value: expected 68 to 65535"
            mtu=$((10#$value))
            ;;
        --up) set_up=1 ;;
        --steer)
            [[ $value =~ ^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}=[0-9]+$ ]] ||
                usage_error "--steer $value: expected MAC=QUEUE, e.g. 02:00:00:00:00:01=1"
            steers+=("$value")
            ;;
        --steer-any-proto) match_proto=0 ;;
        --clear-steer) clear_steer=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            break
            ;;
        -*) usage_error "unknown option $opt" ;;
        *) break ;;
    esac
    shift
done
(($# == 1)) || usage_error "expected one interface name, got $# argument(s)"
iface=$1

if ! command -v "$ETHTOOL" >/dev/null 2>&1; then
    die "ethtool not found. Install it: Debian/Ubuntu: apt-get install ethtool;" \
        "Fedora/RHEL: dnf install ethtool; SUSE: zypper install ethtool; Arch: pacman -S ethtool;" \
        "Alpine: apk add ethtool"
fi
command -v ip >/dev/null 2>&1 ||
    die "ip not found. Install iproute2 (Debian/Ubuntu: apt-get install iproute2; Fedora/RHEL: dnf install iproute)"
[[ -e /sys/class/net/$iface ]] || die "no network interface '$iface' here (list them with: ip -br link)"

changes=$((no_pause + set_up + clear_steer + ${#steers[@]}))
[[ -n $channels ]] && changes=$((changes + 1))
[[ -n $rings ]] && changes=$((changes + 1))
[[ -n $mtu ]] && changes=$((changes + 1))
if ((changes > 0 && !dry_run && EUID != 0)); then
    die "changing NIC settings needs root: run it with sudo, or look first with --dry-run"
fi

failures=0
fail() {
    printf 'FAILED: %s\n' "$*" >&2
    failures=$((failures + 1))
}

# Prints a command, then runs it (unless --dry-run). Returns the command's status.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    ((dry_run)) && return 0
    "$@"
}

# Read-only queries: their output, or nothing if the driver does not support them.
query() {
    "$ETHTOOL" "$@" 2>/dev/null || true
}

# `ethtool -l` / `ethtool -g` output as lines "max_RX=4096", "cur_Combined=4", ...
parse_sections() {
    awk -F':[ \t]*' '
        /^Pre-set maximums/ { section = "max"; next }
        /^Current hardware settings/ { section = "cur"; next }
        section != "" && NF >= 2 { key = $1; gsub(/ /, "_", key); print section "_" key "=" $2 }
    '
}

# Loads parse_sections output into the global associative array `info`, keys prefixed by $1.
declare -A info=()
load_sections() {
    local key val
    while IFS='=' read -r key val; do
        info["$1$key"]=$val
    done
}

# A settings value that is a number, else empty ("n/a", missing).
num() {
    [[ ${1:-} =~ ^[0-9]+$ ]] && printf '%s' "$1"
    return 0
}

# `ethtool -n` rules as lines "LOC|FLOW TYPE|SRC MAC|ETHERTYPE/MASK|ACTION".
parse_rules() {
    awk '
        function flush() { if (loc != "") print loc "|" ft "|" src "|" et "|" action }
        /^Filter:/ { flush(); loc = $2; ft = ""; src = ""; et = ""; action = ""; next }
        /^[ \t]+Flow Type:/ { sub(/^[ \t]+Flow Type: */, ""); ft = $0; next }
        /^[ \t]+Src MAC addr:/ { src = toupper($4); next }
        /^[ \t]+Ethertype:/ { et = toupper($2) "/" toupper($4); next }
        /^[ \t]+Action:/ { sub(/^[ \t]+Action: */, ""); action = $0; next }
        END { flush() }
    '
}

# ------------------------------------------------------------------------------------------
# Show.

driver=$(query -i "$iface" | awk -F': ' '$1 == "driver" { print $2 }')
cur_mtu=$(<"/sys/class/net/$iface/mtu")
flags=$(<"/sys/class/net/$iface/flags")
link_up=$((flags & 1))
mac=$(<"/sys/class/net/$iface/address")

load_sections chan_ < <(query -l "$iface" | parse_sections)
load_sections ring_ < <(query -g "$iface" | parse_sections)
has_channels=0 has_rings=0
for k in "${!info[@]}"; do
    case $k in
        chan_*) has_channels=1 ;;
        ring_*) has_rings=1 ;;
    esac
done
pause=$(query -a "$iface")
ntuple=$(query -k "$iface" | awk -F': ' '$1 == "ntuple-filters" { print $2 }')
rules=$(query -n "$iface" | parse_rules)

indent() { sed 's/^/    /'; }

printf '== %s: driver %s, MAC %s, link %s, MTU %s\n' "$iface" "${driver:-unknown}" "$mac" \
    "$( ((link_up)) && echo up || echo DOWN)" "$cur_mtu"
printf -- '-- channels (ethtool -l):\n'
if ((has_channels)); then
    for k in RX TX Combined; do
        printf '    %-9s current %-5s max %s\n' "$k" "${info[chan_cur_$k]:-n/a}" "${info[chan_max_$k]:-n/a}"
    done
else
    printf '    not reported by the driver\n'
fi
printf -- '-- rings (ethtool -g):\n'
if ((has_rings)); then
    for k in RX TX; do
        printf '    %-9s current %-5s max %s\n' "$k" "${info[ring_cur_$k]:-n/a}" "${info[ring_max_$k]:-n/a}"
    done
else
    printf '    not reported by the driver\n'
fi
printf -- '-- flow control (ethtool -a):\n'
if [[ -n $pause ]]; then
    grep -E '^(Autonegotiate|RX|TX):' <<<"$pause" | indent || true
else
    printf '    not reported by the driver\n'
fi
printf -- '-- ntuple filters: %s\n' "${ntuple:-not reported}"
if [[ -n $rules ]]; then
    while IFS='|' read -r loc ft src et action; do
        printf '    rule %s: %s, src %s, ethertype/mask %s -> %s\n' "$loc" "$ft" "$src" "$et" "$action"
    done <<<"$rules"
fi

printf -- '-- for AoE:\n'
if grep -Eq '^(RX|TX):[[:space:]]+on' <<<"$pause"; then
    printf '    flow control is on: AoE prefers it off (--no-pause)\n'
fi
if ((cur_mtu >= AOE_MIN_MTU)); then
    printf '    MTU %s carries %s sectors per AoE frame' "$cur_mtu" $(((cur_mtu - AOE_HEADERS) / 512))
    ((cur_mtu < 9000)) && printf ' (jumbo frames, --mtu 9000, carry more; xblade uses up to 7)'
    printf '\n'
else
    printf "    MTU %s is below AoE's minimum of %s\n" "$cur_mtu" "$AOE_MIN_MTU"
fi
queues=$(num "${info[chan_cur_Combined]:-}")
[[ -z $queues ]] && queues=$(num "${info[chan_cur_RX]:-}")
if [[ -n $queues ]] && ((queues > 1)); then
    printf '    %s queues, but RSS sends all AoE frames to one: steer initiators with --steer MAC=QUEUE\n' "$queues"
fi
((link_up)) || printf '    the link is down: --up\n'

if ((changes == 0)); then
    printf '(nothing changed: pass options to tune, --help lists them)\n'
    exit 0
fi
if ((dry_run)); then
    printf '== dry run: these commands would change %s:\n' "$iface"
else
    printf '== changing %s:\n' "$iface"
fi

# ------------------------------------------------------------------------------------------
# Change.

if [[ -n $mtu ]]; then
    if ((mtu == cur_mtu)); then
        printf 'MTU: already %s\n' "$mtu"
    else
        ((mtu < AOE_MIN_MTU)) && warn "MTU $mtu is below AoE's minimum of $AOE_MIN_MTU"
        run ip link set dev "$iface" mtu "$mtu" ||
            fail "could not set MTU $mtu (the driver's maximum, or an XDP program attached in driver mode, may forbid it)"
    fi
fi

if [[ -n $channels ]]; then
    max_combined=$(num "${info[chan_max_Combined]:-}")
    max_rx=$(num "${info[chan_max_RX]:-}")
    if [[ -n $max_combined ]] && ((max_combined > 0)); then
        if ((channels > max_combined)); then
            fail "--channels $channels: $iface has at most $max_combined combined channels"
        elif [[ ${info[chan_cur_Combined]:-} == "$channels" ]]; then
            printf 'channels: already %s combined\n' "$channels"
        else
            run "$ETHTOOL" -L "$iface" combined "$channels" || fail "could not set $channels combined channels"
        fi
    elif [[ -n $max_rx ]] && ((max_rx > 0)); then
        if ((channels > max_rx)); then
            fail "--channels $channels: $iface has at most $max_rx RX channels"
        elif [[ ${info[chan_cur_RX]:-} == "$channels" && ${info[chan_cur_TX]:-} == "$channels" ]]; then
            printf 'channels: already %s RX + %s TX\n' "$channels" "$channels"
        else
            run "$ETHTOOL" -L "$iface" rx "$channels" tx "$channels" || fail "could not set $channels channels"
        fi
    else
        fail "--channels: the $iface driver (${driver:-unknown}) does not report or set channels"
    fi
fi

if [[ -n $rings ]]; then
    max_rx=$(num "${info[ring_max_RX]:-}")
    max_tx=$(num "${info[ring_max_TX]:-}")
    if [[ -z $max_rx || -z $max_tx ]]; then
        fail "--rings: the $iface driver (${driver:-unknown}) does not report or set ring sizes"
    else
        want_rx=$rings want_tx=$rings
        [[ $rings == max ]] && want_rx=$max_rx want_tx=$max_tx
        if ((want_rx > max_rx || want_tx > max_tx)); then
            fail "--rings $rings: $iface allows at most RX $max_rx / TX $max_tx"
        elif [[ ${info[ring_cur_RX]:-} == "$want_rx" && ${info[ring_cur_TX]:-} == "$want_tx" ]]; then
            printf 'rings: already RX %s TX %s\n' "$want_rx" "$want_tx"
        else
            run "$ETHTOOL" -G "$iface" rx "$want_rx" tx "$want_tx" || fail "could not set ring sizes"
        fi
    fi
fi

if ((no_pause)); then
    if [[ -z $pause ]]; then
        fail "--no-pause: the $iface driver (${driver:-unknown}) does not report or set flow control"
    elif ! grep -Eq '^(RX|TX):[[:space:]]+on' <<<"$pause"; then
        printf 'flow control: already off\n'
    else
        run "$ETHTOOL" -A "$iface" autoneg off rx off tx off || fail "could not turn flow control off"
    fi
fi

if ((clear_steer || ${#steers[@]} > 0)); then
    # Queue numbers must exist: the channels asked for, else the current count.
    nqueues=${channels:-$queues}
    case $ntuple in
        *fixed*)
            fail "--steer/--clear-steer: $iface (driver ${driver:-unknown}) does not support ntuple filters" \
                "(ntuple-filters: $ntuple); without them all AoE frames arrive on one queue: serve queue 0 only"
            steers=()
            clear_steer=0
            ;;
        off*)
            ((${#steers[@]} > 0)) && { run "$ETHTOOL" -K "$iface" ntuple on || fail "could not enable ntuple filters"; }
            ;;
        "")
            warn "$iface does not report ntuple-filters; trying anyway"
            ;;
    esac
    want_et="0X88A2/0X0"
    if ((clear_steer)); then
        while IFS='|' read -r loc ft src et action; do
            [[ -n $loc && $ft == "Raw Ethernet" && $et == "$want_et" ]] || continue
            run "$ETHTOOL" -N "$iface" delete "$loc" || fail "could not delete rule $loc"
        done <<<"$rules"
    fi
    for s in "${steers[@]}"; do
        smac=${s%=*}
        queue=$((10#${s#*=}))
        if [[ -n $nqueues ]] && ((queue >= nqueues)); then
            fail "--steer $s: queue $queue does not exist ($iface has $nqueues queues: 0 to $((nqueues - 1)))"
            continue
        fi
        # Existing rules for this initiator: keep one that is already right, delete the others.
        present=0
        while IFS='|' read -r loc ft src et action; do
            [[ -n $loc && $ft == "Raw Ethernet" && $src == "${smac^^}" ]] || continue
            ((clear_steer)) && [[ $et == "$want_et" ]] && continue # deleted above
            same_match=0
            if ((match_proto)); then
                [[ $et == "$want_et" ]] && same_match=1
            else
                [[ $et == */0XFFFF ]] && same_match=1
            fi
            if ((same_match && !present)) && [[ $action == "Direct to queue $queue" ]]; then
                printf 'steering: %s already goes to queue %s (rule %s)\n' "$smac" "$queue" "$loc"
                present=1
            else
                run "$ETHTOOL" -N "$iface" delete "$loc" || fail "could not delete rule $loc"
            fi
        done <<<"$rules"
        ((present)) && continue
        rule=(flow-type ether src "$smac")
        ((match_proto)) && rule+=(proto "$AOE_ETHERTYPE")
        run "$ETHTOOL" -N "$iface" "${rule[@]}" action "$queue" ||
            fail "could not add a rule for $smac (if the NIC cannot match the EtherType too, try --steer-any-proto)"
    done
fi

# Last: channel and ring changes often reset the link anyway.
if ((set_up)); then
    if ((link_up)); then
        printf 'link: already up\n'
    else
        run ip link set dev "$iface" up || fail "could not set $iface up"
    fi
fi

if ((failures > 0)); then
    printf '%s setting(s) could not be applied: see FAILED above\n' "$failures" >&2
    exit 1
fi
if ((dry_run)); then
    printf '(dry run: nothing was changed)\n'
else
    printf 'done; these settings last until reboot or driver reload: see the top of this script\n'
fi
