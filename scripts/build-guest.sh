#!/usr/bin/env bash
# Builds the test guest: Debian's bookworm kernel plus a busybox initramfs
# whose /init is tests/guest/init. Nothing is installed on the host; the
# .debs are cached in build/debs so a rebuild needs no network.
# initrd-qga.img is initrd.img with a second cpio archive appended (the kernel
# unpacks both): the QEMU guest agent, the shared libraries it needs and the
# modules of its channel and of an ext4 filesystem. Only the tests of quiesce
# boot it, so every other guest boots as small and as fast as before.
# Usage: scripts/build-guest.sh [OUTDIR]   (default: build/guest)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/build-guest.sh"
INIT="$REPO/tests/guest/init"
OUT=${1:-$REPO/build/guest}
DEBS="$REPO/build/debs"
# load order; dependencies found in each module are put in front anyway
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk)
# initrd-qga.img's: the agent's virtio-serial port, the filesystem it freezes (crc32c: jbd2's checksums)
QGA_MODULES=(virtio_console crc32c_generic ext4)
# the agent and the packages of the libraries it loads (checked below against the binary's needs)
QGA_DEBS=(qemu-guest-agent libc6 libglib2.0-0 libnuma1 libudev1 liburing2 libpcre2-8-0 libcap2)

die() { echo "build-guest: $*" >&2; exit 1; }

fresh() {
    local f
    for f in "$OUT/vmlinux" "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/initrd-qga.img"; do
        [ -f "$f" ] && [ "$f" -nt "$SELF" ] && [ "$f" -nt "$INIT" ] || return 1
    done
}

[ -f "$INIT" ] || die "missing $INIT"
if fresh; then
    echo "build-guest: $OUT is up to date"
    exit 0
fi
for tool in apt-get apt-cache dpkg-deb cpio gzip find; do
    command -v "$tool" >/dev/null || die "needs '$tool' (run scripts/setup-host.sh)"
done

if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    apt-get update -qq || die "apt-get update failed"
    apt-cache show linux-image-amd64 >/dev/null 2>&1 || die "apt knows no linux-image-amd64"
fi

candidate() {
    apt-cache policy "$1" | sed -n 's/^ *Candidate: //p'
}

# Prints the path of the cached .deb of the candidate version of $1.
fetch_deb() {
    local pkg=$1 ver f
    ver=$(candidate "$pkg")
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
        die "no candidate version of $pkg"
    fi
    for f in "$DEBS/${pkg}"_*.deb; do
        [ -f "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && { echo "$f"; return 0; }
    done
    (cd "$DEBS" && apt-get download -q $SANDBOX "$pkg=$ver" >&2) || die "cannot download $pkg=$ver"
    for f in "$DEBS/${pkg}"_*.deb; do
        [ -f "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && { echo "$f"; return 0; }
    done
    die "downloaded $pkg=$ver but cannot find its .deb in $DEBS"
}

mkdir -p "$DEBS" "$OUT"
# _apt cannot write into a root-owned cache dir; apt would fall back with a warning
SANDBOX=""
[ "$(id -u)" -eq 0 ] && SANDBOX="-oAPT::Sandbox::User=root"
KPKG=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
[ -n "$KPKG" ] || die "cannot tell which kernel package linux-image-amd64 depends on"
KDEB=$(fetch_deb "$KPKG")
BDEB=$(fetch_deb busybox-static)

WORK=$(mktemp -d "$REPO/build/guest-work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$KDEB" "$WORK/k"
dpkg-deb -x "$BDEB" "$WORK/b"

KVMLINUZ=$(find "$WORK/k/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
[ -n "$KVMLINUZ" ] || die "no vmlinuz in $KDEB"
KVER=${KVMLINUZ##*/vmlinuz-}
KMOD="$WORK/k/lib/modules/$KVER"
[ -d "$KMOD" ] || die "no /lib/modules/$KVER in $KDEB"
[ -x "$WORK/b/bin/busybox" ] || die "no /bin/busybox in $BDEB"

R="$WORK/root"
mkdir -p "$R/bin" "$R/lib/modules" "$R/dev" "$R/proc" "$R/sys" "$R/tmp"
cp "$WORK/b/bin/busybox" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"  # the kernel runs /init through its #!/bin/sh
cp "$INIT" "$R/init"
chmod 0755 "$R/init" "$R/bin/busybox"
: >"$R/lib/modules/order"

builtin_mod() {
    [ -f "$KMOD/modules.builtin" ] && grep -qE "/$1\.ko(\.[a-z]+)?$" "$KMOD/modules.builtin"
}

module_file() {
    find "$KMOD/kernel" -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" -o -name "$1.ko.gz" | head -n1
}

# Copies module $1 (uncompressed, so busybox insmod takes it) into $MODDIR after its
# dependencies, listed in $MODDIR/$ORDER; those the base initramfs has ($R) are not copied again.
MODDIR="$R/lib/modules"
ORDER=order
add_module() {
    local m=${1//-/_} f dep
    grep -qx "$m" "$R/lib/modules/order" && return 0
    [ -f "$MODDIR/$ORDER" ] && grep -qx "$m" "$MODDIR/$ORDER" && return 0
    builtin_mod "$m" && return 0
    f=$(module_file "$m")
    [ -z "$f" ] && f=$(module_file "${m//_/-}")
    [ -n "$f" ] || die "kernel $KVER has no module $m, built-in or loadable"
    case "$f" in
        *.ko.xz) xz -dc "$f" >"$MODDIR/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$MODDIR/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$MODDIR/$m.ko" ;;
        *) cp "$f" "$MODDIR/$m.ko" ;;
    esac
    for dep in $(tr '\0' '\n' <"$MODDIR/$m.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$dep"
    done
    echo "$m" >>"$MODDIR/$ORDER"
}
for m in "${MODULES[@]}"; do
    add_module "$m"
done

(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) \
    | gzip -6 >"$WORK/initrd.img"

# The agent's part: its binary, the libraries the .debs' own loader resolves for it, its modules.
Q="$WORK/qga"
mkdir -p "$WORK/q" "$Q/lib/modules" "$Q/usr/sbin" "$Q/lib64" "$Q/lib/x86_64-linux-gnu" "$Q/var/run"
for pkg in "${QGA_DEBS[@]}"; do
    dpkg-deb -x "$(fetch_deb "$pkg")" "$WORK/q"
done
LOADER="$WORK/q/lib64/ld-linux-x86-64.so.2"
[ -x "$WORK/q/usr/sbin/qemu-ga" ] || die "no /usr/sbin/qemu-ga in qemu-guest-agent"
[ -x "$LOADER" ] || die "no dynamic loader in libc6"
LIBPATH=$(find "$WORK/q" -name 'lib*.so*' -printf '%h\n' | sort -u | tr '\n' ':')
NEEDS=$("$LOADER" --library-path "$LIBPATH" --list "$WORK/q/usr/sbin/qemu-ga") || die "cannot resolve qemu-ga's libraries"
if grep -q 'not found' <<<"$NEEDS"; then
    die "qemu-ga needs libraries that QGA_DEBS lacks: $(grep 'not found' <<<"$NEEDS" | tr -s ' \t\n' ' ')"
fi
cp "$WORK/q/usr/sbin/qemu-ga" "$Q/usr/sbin/qemu-ga"
cp "$LOADER" "$Q/lib64/"
while read -r lib; do
    case "$lib" in
        */ld-linux-*) ;;  # the loader, in /lib64 already
        "$WORK/q/"*) cp -L "$lib" "$Q/lib/x86_64-linux-gnu/" ;;
    esac
done < <(sed -n 's/^.* => \([^ ]*\) (.*$/\1/p' <<<"$NEEDS")
MODDIR="$Q/lib/modules"
ORDER=order.qga
for m in "${QGA_MODULES[@]}"; do
    add_module "$m"
done
(cd "$Q" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) \
    | gzip -6 >"$WORK/qga.cpio.gz"
cat "$WORK/initrd.img" "$WORK/qga.cpio.gz" >"$WORK/initrd-qga.img"

cp "$KVMLINUZ" "$WORK/vmlinuz"
# The guests boot vmlinux, the ELF inside the bzImage: QEMU enters it through its PVH note,
# so the kernel never decompresses itself: under TCG that xz step was most of a boot.
# A kernel without the note is booted as its bzImage.
python3 - "$KVMLINUZ" "$WORK/vmlinux" <<'PY' || cp "$KVMLINUZ" "$WORK/vmlinux"
import lzma, struct, sys
image = open(sys.argv[1], 'rb').read()
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(image[image.find(b'\xfd7zXZ\x00'):])
if elf[:4] != b'\x7fELF':
    sys.exit('build-guest: no ELF kernel inside the bzImage; booting the bzImage')
shoff, = struct.unpack_from('<Q', elf, 0x28)
shentsize, shnum = struct.unpack_from('<HH', elf, 0x3a)
pvh = False
for i in range(shnum):
    sh_type, = struct.unpack_from('<I', elf, shoff + i * shentsize + 4)
    off, size = struct.unpack_from('<QQ', elf, shoff + i * shentsize + 0x18)
    pos = off
    while sh_type == 7 and pos + 12 <= off + size:  # SHT_NOTE: namesz, descsz, type, name, desc
        namesz, descsz, ntype = struct.unpack_from('<III', elf, pos)
        pvh = pvh or (elf[pos + 12:pos + 12 + namesz].rstrip(b'\0') == b'Xen' and ntype == 18)  # PHYS32_ENTRY
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
if not pvh:
    sys.exit('build-guest: the kernel has no PVH entry point; booting the bzImage')
open(sys.argv[2], 'wb').write(elf)
PY
# readable by libvirt's unprivileged QEMU user
chmod 0644 "$WORK/initrd.img" "$WORK/initrd-qga.img" "$WORK/vmlinuz" "$WORK/vmlinux"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/vmlinux" "$OUT/vmlinux"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
mv -f "$WORK/initrd-qga.img" "$OUT/initrd-qga.img"
echo "$KVER" >"$OUT/kernel-version"
echo "build-guest: built $OUT (kernel $KVER, modules: $(tr '\n' ' ' <"$R/lib/modules/order");" \
     "initrd-qga.img adds qemu-ga and $(tr '\n' ' ' <"$Q/lib/modules/order.qga"))"
