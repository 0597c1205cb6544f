#!/usr/bin/env bash
# Builds the test guest: Debian's bookworm kernel plus a busybox initramfs
# whose /init is tests/guest/init. Nothing is installed on the host; the
# .debs are cached in build/debs so a rebuild needs no network.
# Usage: scripts/build-guest.sh [OUTDIR]   (default: build/guest)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/build-guest.sh"
INIT="$REPO/tests/guest/init"
OUT=${1:-$REPO/build/guest}
DEBS="$REPO/build/debs"
# load order; dependencies found in each module are put in front anyway
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk)

die() { echo "build-guest: $*" >&2; exit 1; }

fresh() {
    local f
    for f in "$OUT/vmlinuz" "$OUT/initrd.img"; do
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

# Copies module $1 (uncompressed, so busybox insmod takes it) after its dependencies.
add_module() {
    local m=${1//-/_} f dep
    grep -qx "$m" "$R/lib/modules/order" && return 0
    builtin_mod "$m" && return 0
    f=$(module_file "$m")
    [ -z "$f" ] && f=$(module_file "${m//_/-}")
    [ -n "$f" ] || die "kernel $KVER has no module $m, built-in or loadable"
    case "$f" in
        *.ko.xz) xz -dc "$f" >"$R/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$R/lib/modules/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$R/lib/modules/$m.ko" ;;
        *) cp "$f" "$R/lib/modules/$m.ko" ;;
    esac
    for dep in $(tr '\0' '\n' <"$R/lib/modules/$m.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$dep"
    done
    echo "$m" >>"$R/lib/modules/order"
}
for m in "${MODULES[@]}"; do
    add_module "$m"
done

(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) \
    | gzip -6 >"$WORK/initrd.img"
cp "$KVMLINUZ" "$WORK/vmlinuz"
# readable by libvirt's unprivileged QEMU user
chmod 0644 "$WORK/initrd.img" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
echo "$KVER" >"$OUT/kernel-version"
echo "build-guest: built $OUT (kernel $KVER, modules: $(tr '\n' ' ' <"$R/lib/modules/order"))"
