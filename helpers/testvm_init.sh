#!/bin/sh
# /init of the pcocc test VM (busybox). Written into the initramfs by helpers/build_testvm.py.
#
# It mounts each virtio-fs share of the seed's pcocc/mounts table ("TAG TARGET" lines).
#
# Kernel command line options it reads:
#   testvm.net=static (default: 10.0.2.15/24 via 10.0.2.2, QEMU user networking) | dhcp
#   testvm.seed=/dev/vdX (default: the first virtio disk holding an iso9660 'cidata' seed)
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run /seed /disk /root /var/log
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts -o mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
say() { read -r up _ < /proc/uptime; echo "testvm: $* (${up} s)"; }
say "init started"

cmdline_opt() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1"=*) echo "${word#*=}"; return;; esac
    done
}

# Virtio is modular in Debian's cloud kernel: the builder lists modules in dependency order.
while read -r mod; do
    insmod "/lib/modules/$mod.ko" 2>/dev/null || say "insmod $mod failed"
done < /etc/testvm/modules
say "modules loaded"

ip link set lo up
net=$(cmdline_opt testvm.net)
if ip link show eth0 >/dev/null 2>&1; then
    ip link set eth0 up
    if [ "$net" = dhcp ]; then
        udhcpc -i eth0 -q -n -t 5 -s /etc/testvm/udhcpc.script >/dev/null 2>&1 || say "dhcp failed"
    else
        ip addr add 10.0.2.15/24 dev eth0
        ip route add default via 10.0.2.2
        echo "nameserver 10.0.2.3" > /etc/resolv.conf
    fi
else
    say "no eth0"
fi

# The seed: a NoCloud-style iso9660 image (label cidata) attached as a virtio disk.
seed_dev=$(cmdline_opt testvm.seed)
seed_found=""
for try in 1 2 3 4 5 6 7 8 9 10; do
    for dev in ${seed_dev:-/dev/vd?}; do
        [ -b "$dev" ] || continue
        if mount -t iso9660 -o ro "$dev" /seed 2>/dev/null; then
            if [ -f /seed/meta-data ]; then seed_found=$dev; break; fi
            umount /seed
        elif [ -z "$disk_mounted" ] && mount -t ext4 "$dev" /disk 2>/dev/null; then
            disk_mounted=$dev
        fi
    done
    [ -n "$seed_found" ] && break
    sleep 0.2
done
[ -n "$seed_found" ] && say "seed on $seed_found" || say "no seed found"
# The image disk (ext2 with /etc/os-release), mounted read-write when present.
if [ -z "$disk_mounted" ]; then
    for dev in /dev/vd?; do
        [ -b "$dev" ] && [ "$dev" != "$seed_found" ] || continue
        mount -t ext4 "$dev" /disk 2>/dev/null && { disk_mounted=$dev; break; }
    done
fi

# Private networks: "MAC ADDRESS/PREFIX MTU" lines; the NIC is found by its MAC.
if [ -f /seed/pcocc/net ]; then
    while read -r mac addr mtu; do
        for dir in /sys/class/net/*; do
            [ "$(cat "$dir/address" 2>/dev/null)" = "$mac" ] || continue
            dev=${dir##*/}
            ip link set "$dev" mtu "$mtu"
            ip link set "$dev" up
            ip addr add "$addr" dev "$dev" && say "$dev: $addr"
        done
    done < /seed/pcocc/net
fi

name=""
if [ -f /seed/meta-data ]; then
    name=$(sed -n 's/^local-hostname:[[:space:]]*//p' /seed/meta-data | tr -d "\"' \r")
fi
[ -n "$name" ] || name=testvm
hostname "$name"
echo "$name" > /etc/hostname

# Host directories shared over virtio-fs: pcocc/mounts has one "TAG TARGET" line per share.
if [ -f /seed/pcocc/mounts ]; then
    while read -r tag target; do
        [ -n "$tag" ] && [ -n "$target" ] || continue
        mkdir -p "$target"
        if mount -t virtiofs "$tag" "$target"; then
            say "mounted $tag on $target"
        else
            say "cannot mount $tag on $target"
        fi
    done < /seed/pcocc/mounts
fi

mkdir -p /root/.ssh /etc/dropbear
chmod 700 /root /root/.ssh
[ -f /seed/pcocc/authorized_keys ] && cat /seed/pcocc/authorized_keys > /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys 2>/dev/null

hostkey=/etc/dropbear/dropbear_ed25519_host_key
if [ -f /seed/pcocc/ssh_host_ed25519_key ]; then
    dropbearconvert openssh dropbear /seed/pcocc/ssh_host_ed25519_key "$hostkey" >/dev/null 2>&1 \
        || say "cannot convert the seed host key"
fi
[ -f "$hostkey" ] || dropbearkey -t ed25519 -f "$hostkey" >/dev/null 2>&1
dropbear -s -p 22 -r "$hostkey" -P /run/dropbear.pid && say "dropbear started"

if [ -x /bin/qemu-ga ]; then
    for port in /sys/class/virtio-ports/*; do
        [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
        mkdir -p /run/qemu-ga
        qemu-ga -m virtio-serial -p "/dev/${port##*/}" -t /run/qemu-ga \
            -l /var/log/qemu-ga.log &
        say "qemu-ga started on ${port##*/}"
    done
fi

if [ -f /seed/user-data ] && head -c 2 /seed/user-data | grep -q '^#!'; then
    cp /seed/user-data /run/user-data
    chmod 700 /run/user-data
    (/run/user-data > /var/log/user-data.log 2>&1; echo $? > /run/user-data.status) &
fi
say "ready"

exec /bin/busybox init
