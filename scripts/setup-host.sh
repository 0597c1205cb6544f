#!/usr/bin/env bash
# Installs the hypervisor side: QEMU 10 and libvirt 11.3 from bookworm-backports,
# plus what the test guest and libvirt-python's build need. Safe to run twice.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

derive_backports() {
    # Copy the machine's own Debian entry and change the suite, so no mirror
    # host is ever written down by us.
    local out=/etc/apt/sources.list.d/vmfleet-backports.sources
    [ -f "$out" ] && return 0
    local src=/etc/apt/sources.list.d/debian.sources
    if [ -f "$src" ]; then
        python3 - "$src" <<'PY' | $SUDO tee "$out" >/dev/null
import sys
text = open(sys.argv[1]).read()
for stanza in text.split("\n\n"):
    lines = stanza.strip().splitlines()
    suites = [l for l in lines if l.startswith("Suites:")]
    if suites and " bookworm" in " " + suites[0].split(":", 1)[1] + " " and "security" not in stanza:
        print("\n".join("Suites: bookworm-backports" if l.startswith("Suites:") else l
                        for l in lines if not l.startswith("#")))
        break
else:
    sys.exit("no bookworm entry found in " + sys.argv[1])
PY
    elif [ -f /etc/apt/sources.list ]; then
        grep -E '^deb .* bookworm main' /etc/apt/sources.list | head -n1 \
            | sed 's/ bookworm main/ bookworm-backports main/' \
            | $SUDO tee /etc/apt/sources.list.d/vmfleet-backports.list >/dev/null
    else
        echo "setup-host: no Debian apt source found to derive bookworm-backports from" >&2
        exit 1
    fi
}

need_install() {
    command -v qemu-system-x86_64 >/dev/null || return 0
    command -v libvirtd >/dev/null || return 0
    command -v virtlogd >/dev/null || return 0
    [ -f /usr/include/libvirt/libvirt.h ] || return 0
    command -v cpio >/dev/null || return 0
    command -v pkg-config >/dev/null || return 0
    command -v shellcheck >/dev/null || return 0
    command -v tini >/dev/null || return 0
    command -v mkfs.ext4 >/dev/null || return 0  # the quiesce tests' ext4 disk (and debugfs, dumpe2fs)
    # UEFI guests (<os firmware='efi'>): OVMF's pflash code and the varstore template
    [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || return 0
    local v
    v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\).*/\1/p')
    [ "${v:-0}" -ge 10 ] || return 0
    return 1
}

if need_install; then
    derive_backports
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
        --no-install-recommends \
        qemu-system-x86 qemu-utils qemu-block-extra \
        libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev \
        libvirt-daemon-system \
        pkg-config cpio gzip xz-utils shellcheck tini e2fsprogs ovmf >/dev/null
fi

# The simulated hypervisors of the fleet tests (tests/rig/hypervisors.py): an sshd
# per network namespace (ip netns), a login user who reaches root through sudo. From the
# stable suite; no service is started (the rig starts each sshd itself). iptables: the TLS
# migration test holds the source's connection back while an intruder races it (rig/tls.py).
rig_need_install() {
    [ -x /usr/sbin/sshd ] || return 0
    [ -x /usr/sbin/iptables ] || return 0
    command -v sudo >/dev/null || return 0
    command -v ssh >/dev/null || return 0
    command -v ip >/dev/null || return 0
    return 1
}
if rig_need_install; then
    $SUDO apt-get update -qq
    noservice=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # keep the package's postinst from starting an sshd in the root namespace
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        noservice=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        openssh-server openssh-client sudo iproute2 iptables >/dev/null
    [ -z "$noservice" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi

# The HTML fleet report's browser test (tests/system/test_fleet_report_html.py): headless
# Chromium and its WebDriver, from the stable suite (Selenium drives them).
browser_need_install() {
    command -v chromium >/dev/null || return 0
    command -v chromedriver >/dev/null || return 0
    return 1
}
if browser_need_install; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null
fi

# libvirt's QEMU processes are daemonized: when one exits, whoever adopted it
# must reap it, and libvirt waits (polling kill(pid, 0)) until it is gone. A
# hypervisor's systemd reaps at once; this machine's init took 1.5-2 s, which
# libvirt added to every save and shutdown. So libvirtd runs under tini as a
# child subreaper: QEMU is adopted by tini and reaped as soon as it exits.
reaped_promptly() {
    [ "$(cat /proc/1/comm)" = systemd ] && return 0
    local ppid
    ppid=$(ps -o ppid= -p "$(pgrep -xo libvirtd)" | tr -d ' ')
    [ "$(cat "/proc/$ppid/comm" 2>/dev/null)" = tini ]
}

# No systemd here: start the daemons ourselves if they are not up.
start_daemons() {
    $SUDO mkdir -p /var/run/libvirt /var/lib/libvirt/images /var/log/libvirt
    # the host's own, by its pidfile, not pgrep'ed: the simulated hypervisors of tests/rig run virtlogds of their own
    { [ -f /run/virtlogd.pid ] && $SUDO kill -0 "$(cat /run/virtlogd.pid)" 2>/dev/null; } || $SUDO virtlogd -d
    if pgrep -x libvirtd >/dev/null && ! reaped_promptly \
            && [ -z "$(virsh -c qemu:///system list --all --name 2>/dev/null | tr -d '[:space:]')" ]; then
        # started by an earlier version of this script; nothing defined, so nothing to lose
        $SUDO pkill -x libvirtd
        for _ in $(seq 1 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.2; done
    fi
    # asked, not pgrep'ed: the simulated hypervisors of tests/rig run libvirtds of their own
    if ! virsh -c qemu:///system version >/dev/null 2>&1; then
        $SUDO env LIBVIRT_LOG_OUTPUTS=3:file:/var/log/libvirt/libvirtd.log \
            setsid -f tini -s -- libvirtd </dev/null >/dev/null 2>&1
    fi
    for _ in $(seq 1 50); do
        virsh -c qemu:///system version >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "setup-host: libvirtd did not answer on qemu:///system" >&2
    return 1
}
start_daemons
qemu-system-x86_64 --version | head -n1
virsh -c qemu:///system version | sed -n '1,4p'
