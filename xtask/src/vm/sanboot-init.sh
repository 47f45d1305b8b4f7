#!/bin/busybox sh
# /init of the `cargo xtask vm-test --client ipxe` guest (built by xtask/src/vm/guest.rs, put on
# the exported disk by xtask/src/vm/bootdisk.rs).
#
# iPXE booted this kernel and initramfs from the AoE export e<xbvm.shelf>.<xbvm.slot> through
# INT 13h (sanboot). Now Linux takes the disk over, as a root-on-AoE system does: it loads
# `aoe`, finds the same export over the same NIC, reads the boot loader's sectors back, mounts
# partition 1 as /dev/etherd/e<shelf>.<slot>p1, checks the files the firmware loaded, writes
# one, and powers off. It talks to the host only through console lines that start with
# `XBLADE-VM: ` (as xtask/vm/init.sh does):
#
#   BOOTED <uptime_cs>                       init started: the firmware's part is done
#   READY <uptime_cs> sectors=N frame_bytes=N mtu=N   the device and its partition are there
#   INFO mbr hex=...                         sector 0 as read through aoe (the host compares)
#   INFO vbr hex=... start=N                 partition 1's first sector (extlinux's boot sector)
#   INFO file-vmlinuz sha256=... / INFO file-initrd.img sha256=...   read through e1.0p1
#   INFO written boot_id=...                 /linux-was-here holds "boot_id <id>"
#   PASS sanboot | FAIL sanboot <reason>
#   END <uptime_cs>
#
# Times are centiseconds of /proc/uptime. A stall watchdog as in init.sh: no I/O completed for
# 30 s with I/O in flight dumps the aoe driver's state (DIAG lines) and fails.

/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

SHELF=1 SLOT=0 SECTORS=0 STALL_SECS=30
# shellcheck disable=SC2013 # words wanted: the kernel command line's arguments
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        xbvm.shelf=*) SHELF=${arg#*=} ;;
        xbvm.slot=*) SLOT=${arg#*=} ;;
        xbvm.sectors=*) SECTORS=${arg#*=} ;;
        xbvm.stall_secs=*) STALL_SECS=${arg#*=} ;;
    esac
done

say() { echo "XBLADE-VM: $*"; }

# Centiseconds since boot ("12.34" -> 1234; the "1" prefix keeps "05" from reading as octal).
now_cs() {
    read -r up _ < /proc/uptime
    echo $(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

finish() {
    dmesg | grep -iE 'aoe|etherd|error|fail|ext4' | tail -n 40 | sed 's/^/dmesg: /'
    say "END $(now_cs)"
    sync
    poweroff -f
    sleep 10
}

fail() {
    say "FAIL sanboot $*"
    finish
}

say "BOOTED $(now_cs)"

while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done < /lib/modules/load-order

i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ $i -gt 50 ] && fail "no eth0"
    sleep 0.1
done
# The MTU is the NIC's own (virtio-net's host_mtu), as the firmware found it.
ip link set lo up
ip link set eth0 up || fail "eth0 up"

insmod /lib/modules/aoe.ko aoe_iflist=eth0 || fail "insmod aoe"

DEV=/dev/etherd/e$SHELF.$SLOT
SYS="/sys/block/etherd!e$SHELF.$SLOT"
PART=${DEV}p1
i=0
while [ ! -b "$DEV" ] || [ ! -e "$SYS/size" ] || [ "$(cat "$SYS/size")" = 0 ] || [ ! -b "$PART" ]; do
    i=$((i + 1))
    [ $i -gt 300 ] && fail "no $DEV with a partition $PART after 30 s"
    [ $((i % 10)) -eq 0 ] && [ -c /dev/etherd/discover ] && echo > /dev/etherd/discover
    sleep 0.1
done
size=$(cat "$SYS/size")
frames=$(dmesg | sed -n 's/.*setting \([0-9]*\) byte data frames.*/\1/p' | tail -n 1)
say "READY $(now_cs) sectors=$size frame_bytes=${frames:-unknown} mtu=$(cat /sys/class/net/eth0/mtu)"
[ "$size" = "$SECTORS" ] || fail "capacity: $SYS/size is $size sectors, expected $SECTORS"

diagnose() {
    say "DIAG stat: $(cat "$SYS/stat")"
    say "DIAG inflight: $(cat "$SYS/inflight")"
    mount -t debugfs debugfs /sys/kernel/debug 2> /dev/null
    for f in /sys/kernel/debug/aoe/*; do
        [ -e "$f" ] && sed "s|^|XBLADE-VM: DIAG ${f##*/}: |" "$f"
    done
    for pid in $(pidof dd sha256sum mount umount sync); do
        sed "s|^|XBLADE-VM: DIAG stack $pid $(cat "/proc/$pid/comm"): |" "/proc/$pid/stack" 2> /dev/null
    done
    echo w > /proc/sysrq-trigger
    dmesg | tail -n 60 | sed 's/^/XBLADE-VM: DIAG dmesg: /'
}
watchdog() {
    last="" same=0
    while sleep 5; do
        # shellcheck disable=SC2046 # word splitting wanted: the stat fields
        set -- $(cat "$SYS/stat")
        now="$1 $5"
        # shellcheck disable=SC2046
        set -- $(cat "$SYS/inflight")
        if [ "$now" = "$last" ] && [ $(($1 + $2)) -gt 0 ]; then
            same=$((same + 5))
        else
            same=0
        fi
        last=$now
        if [ $same -ge "$STALL_SECS" ]; then
            say "STALL no I/O completed for ${same}s with $1 reads and $2 writes in flight"
            diagnose
            fail "stalled: no I/O completed for ${same}s with I/O in flight"
        fi
    done
}
watchdog &

# sector_hex DEVICE SECTOR: that sector as one line of lower-case hex, in /tmp/hex.
sector_hex() {
    dd if="$1" of=/tmp/sector bs=512 skip="$2" count=1 iflag=direct 2> /tmp/dd.err \
        || fail "reading sector $2 of $1: $(cat /tmp/dd.err)"
    od -An -v -tx1 /tmp/sector | tr -d ' \n' > /tmp/hex
}

# The boot loader's sectors, through Linux's initiator: the MBR, and partition 1's boot sector.
sector_hex "$DEV" 0
say "INFO mbr hex=$(cat /tmp/hex)"
start=$(cat "$SYS/etherd!e$SHELF.${SLOT}p1/start") || fail "no start for $PART"
sector_hex "$DEV" "$start"
say "INFO vbr hex=$(cat /tmp/hex) start=$start"

# The partition, as a root-on-AoE system mounts it.
mount -t ext4 "$PART" /mnt 2> /tmp/mount.err || fail "mount $PART: $(cat /tmp/mount.err)"
for f in vmlinuz initrd.img; do
    [ -f "/mnt/$f" ] || fail "no /$f on $PART"
    sum=$(sha256sum "/mnt/$f") || fail "reading /$f from $PART"
    say "INFO file-$f sha256=${sum%% *}"
done
read -r boot_id < /proc/sys/kernel/random/boot_id
echo "boot_id $boot_id" > /mnt/linux-was-here || fail "writing to $PART"
umount /mnt || fail "umount $PART"
say "INFO written boot_id=$boot_id"
say "PASS sanboot"
finish
