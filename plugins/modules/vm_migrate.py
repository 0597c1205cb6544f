#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: vm_migrate
short_description: Move a running VM to another hypervisor, live
version_added: 1.0.0
description:
  - Moves one running libvirt domain from the host the task runs on to the libvirtd at O(destination_uri),
    live, through libvirt's peer-to-peer migration; the guest keeps running during the copy and pauses only
    for the final switch (RV(downtime_ms), as QEMU measured it).
  - The source libvirtd itself connects to O(destination_uri) (for C(qemu+ssh://) with root's SSH key and
    known_hosts on the source host); QEMU sends the guest's memory straight to O(migration_address) on the
    destination (default the host of O(destination_uri)).
  - With O(persistent) the domain is defined at the destination and, with O(undefine_source), undefined at
    the source; libvirt does both only once the migration succeeded.
  - Idempotent - when the domain no longer runs on this host but runs at the destination, nothing changes.
  - A failure, or O(timeout) running out (the migration is cancelled), leaves the domain running at the
    source and nothing defined at the destination.
  - A raw QEMU VM (O(qmp_socket)) moves by starting its destination QEMU at the host of O(destination_uri) from
    the source QEMU's command line (with C(-incoming defer), daemonized, its QMP socket at
    O(destination_qmp_socket), a C(-serial file:) log appended to instead of truncated) over SSH as the source
    host's root reaches it (C(ssh://USER@HOST); a non-root USER runs QEMU with C(sudo -n)), then migrating to
    it (its QMP monitor driven there by O(destination_python) with C(qemu.qmp)); the source QEMU quits once the
    destination runs. With O(storage=copy) the copies are created at the destination (C(qemu-img create), same
    format and size), its QEMU exports them over NBD, the source mirrors each disk into them while the guest
    runs and, with the guest paused for the switch (C(pause-before-switchover)), ends the mirrors in sync
    before the destination takes over.
extends_documentation_fragment:
  - vmfleet.kvm.connection
  - vmfleet.kvm.relaunch
attributes:
  check_mode:
    description: Checks the destination (reachable, enough memory, no copy running) and says what would happen.
  diff_mode:
    support: none
    description: Nothing to compare.
options:
  destination_uri:
    description:
      - libvirt URI of the destination hypervisor as the source host reaches it, such as
        V(qemu+ssh://vmfleet@hv2.example.com/system) or V(qemu+tcp://hv2.example.com/system).
      - For a raw QEMU VM, the SSH address of the destination host, V(ssh://vmfleet@hv2.example.com)
        (only the user, host and port count).
      - The user must be a plain name (letters, digits, V(.), V(_), V(-), not starting with V(-)) and the host a
        DNS name or an IPv4/IPv6 address; anything else fails before any command runs.
      - The destination QEMU's command line goes to it on stdin, not on ssh's or sudo's command line; the C(data)
        of a C(-object secret) reaches it in a file only root reads, removed once QEMU has read it. Secrets
        (C(data) of a secret object, C(password=), rbd's C(key=)) show as C(********) in the result.
    type: str
    required: true
  destination_qmp_socket:
    description:
      - For a raw QEMU VM, the QMP socket of the QEMU at the destination. Default - the same path as O(qmp_socket).
      - When it differs, a C(-pidfile) of the command line moves into its directory too.
    type: path
  destination_python:
    description:
      - For a raw QEMU VM, the Python at the destination host that speaks to the destination QEMU's QMP socket
        (run over the same SSH, with C(sudo -n) for a non-root user); it must have C(qemu.qmp).
      - Default - the Python running this module (a fleet prepared by the C(vmfleet.kvm.hypervisor) role has the
        same virtualenv path on every host).
    type: path
  migration_address:
    description:
      - Address of the destination that QEMU's migration stream goes to. Default - the host of O(destination_uri).
      - The destination QEMU's incoming port (and with O(storage=copy) its NBD server) listens on this address
        only when it is an IP address (a raw QEMU VM - also on a name, as the destination resolves it); for a
        libvirt domain and a name, libvirt's C(migration_address) in the destination's C(qemu.conf) applies
        (libvirt's default, every address).
    type: str
  storage:
    description:
      - V(shared) - the disks stay where they are (both hosts see the same paths).
      - V(copy) - every writable file disk is copied to the destination while the guest runs (QEMU's NBD and
        block mirror, as C(virsh migrate --copy-storage-all)). The destination images must not exist yet; the
        module creates them (for a libvirt domain through the destination's libvirt, in its storage pool at that
        directory or a transient one) and removes them again when the migration fails.
    type: str
    choices: [shared, copy]
    default: shared
  destination_dir:
    description:
      - With O(storage=copy), the directory the disks go to at the destination (same file names). Default - the
        paths they have at the source (libvirt domains; a raw QEMU VM needs it).
    type: path
  persistent:
    description: Define the domain at the destination (as C(virsh migrate --persistent)).
    type: bool
    default: true
  undefine_source:
    description: Undefine the domain at the source once the migration succeeded (as C(virsh migrate --undefinesource)).
    type: bool
    default: true
  bandwidth_mib_s:
    description: Bandwidth limit of the migration in MiB/s. V(0) - no limit.
    type: int
    default: 0
  max_downtime_ms:
    description: Longest pause of the guest allowed for the switch, in milliseconds. V(0) - QEMU's default (300).
    type: int
    default: 0
  parallel_connections:
    description: Channels that carry the memory at once (multifd). V(1) - one stream.
    type: int
    default: 1
  auto_converge:
    description:
      - Let QEMU throttle the guest's CPUs when it dirties memory faster than the link carries it.
    type: bool
    default: false
  postcopy:
    description:
      - Allow postcopy - when precopy does not converge (the guest dirties memory faster than the link carries
        it, from the second pass on, or half of O(timeout) is gone) the guest switches to the destination and
        the rest of its memory follows on demand.
      - Once in postcopy the migration cannot be cancelled; a network failure then leaves the guest paused.
    type: bool
    default: false
  journal_dir:
    description:
      - For a libvirt domain with snapshots, the directory of the durable journal that holds their metadata while it
        moves (C(<journal_dir>/<domain>.snapshots.json), created with mode 0700), so that a run killed half-way is
        finished by the next one.
      - For a VM with snapshot files in O(memory_dir), the journal of their carry
        (C(<journal_dir>/<domain or qmp socket>.snapshot-files.json)).
    type: path
    default: /var/lib/vmfleet/journal
    version_added: 1.2.0
  memory_dir:
    description:
      - The directory of the VM's instant snapshots (memory file and manifest) and a raw QEMU VM's external snapshot
        records, as given to M(vmfleet.kvm.snapshot); they move with the VM to the same directory at the destination.
    type: path
    default: /var/lib/vmfleet/snapshots
    version_added: 1.2.0
  tls:
    description:
      - Encrypt and authenticate the migration stream with TLS (X.509 certificates, both ends verified), so that
        nobody on the migration network reads the guest's memory or feeds the destination a stream of their own.
      - A libvirt domain - libvirt's TLS migration (C(virsh migrate --tls)) with the certificates where libvirt
        reads them at each host (C(migrate_tls_x509_cert_dir), by default C(/etc/pki/qemu)).
      - A raw QEMU VM - a C(tls-creds-x509) object on both QEMUs from O(tls_dir) (the destination the server,
        verifying the source's client certificate, the source the client, checking the destination's
        certificate against O(migration_address)); with O(storage=copy) the NBD disk copies go over TLS too.
      - O(parallel_connections) (multifd) go over TLS as well; O(postcopy) with O(tls) is refused before
        anything changes.
      - Missing or unreadable certificates, or certificates of another CA, fail before the guest pauses and name
        the file and the host; the VM runs on at the source.
      - A libvirt domain on a host whose libvirtd has C(migrate_tls_force) on (the hypervisor role's
        C(hypervisor_migrate_tls_force)) moves only with V(true); without it the task fails naming
        C(migrate_tls_force) before anything moves.
    type: bool
    default: false
    version_added: 1.2.0
  tls_dir:
    description:
      - For a raw QEMU VM with O(tls), the directory of the certificates at both hosts, in libvirt's layout -
        C(ca-cert.pem) (the fleet's CA), C(server-cert.pem) and C(server-key.pem) (used at the destination; the
        certificate names the host's migration address), C(client-cert.pem) and C(client-key.pem) (used at the
        source). Default - C(/etc/pki/qemu), libvirt's.
      - For a libvirt domain libvirt's C(qemu.conf) says where they are; giving O(tls_dir) fails.
    type: path
    version_added: 1.2.0
notes:
  - O(timeout) bounds the whole run; when it runs out during precopy the migration is cancelled and the VM runs
    on at the source.
  - A libvirt domain with snapshots moves with O(storage=shared) (libvirt itself refuses to migrate a domain with
    snapshot metadata). Their internal snapshots stay in the shared images; their metadata goes with the domain - each
    snapshot's XML is dumped (secure) into a durable journal in O(journal_dir), the metadata alone is removed, the
    domain migrates, and the snapshots are defined again at the destination (the current one current again), or back
    at the source when the migration fails. A re-run after the module was killed half-way defines them where the
    domain runs.
  - O(storage=copy) cannot carry snapshots (the copy takes the disks' active data only); a domain with any, in
    libvirt's metadata or in its images, is refused before anything changes, naming each; so is a raw QEMU VM with
    instant or external snapshots in O(memory_dir), and a domain with instant snapshots there.
  - Instant snapshots (and a raw QEMU VM's external snapshots) move with O(storage=shared) - each memory file is copied to
    O(memory_dir) at the destination (over SSH to the host of O(destination_uri)) before the migration starts, and
    after it the manifests and records (a raw QEMU's relaunch command line naming its QMP socket there) are written there last;
    only then are the source's files removed. When the destination sees the same O(memory_dir) (shared), only the
    manifests are rewritten. A failed migration removes the copies; a re-run after the module was killed finishes or
    undoes the carry (its journal is in O(journal_dir)).
seealso:
  - module: vmfleet.kvm.vm_save
  - module: vmfleet.kvm.drive_mirror
  - ref: ansible_collections.vmfleet.kvm.docsite.migration
    description: Moving a running VM to another hypervisor.
'''

EXAMPLES = r'''
- name: Move web01 to hv2, shared storage
  vmfleet.kvm.vm_migrate:
    domain: web01
    destination_uri: qemu+ssh://vmfleet@hv2.example.com/system
    parallel_connections: 4
    max_downtime_ms: 300
    timeout: 600

- name: Move a raw QEMU VM (shared storage); its QEMU starts at hv2 from the same command line
  vmfleet.kvm.vm_migrate:
    qmp_socket: /run/vms/build01.qmp
    destination_uri: ssh://vmfleet@hv2.example.com
    parallel_connections: 2

- name: Move web02 with its memory encrypted (certificates in /etc/pki/qemu at both hosts)
  vmfleet.kvm.vm_migrate:
    domain: web02
    destination_uri: qemu+ssh://vmfleet@hv2.example.com/system
    migration_address: 10.0.0.2
    tls: true

- name: Move db01 with its disks, allowing postcopy
  vmfleet.kvm.vm_migrate:
    domain: db01
    destination_uri: qemu+ssh://vmfleet@hv3.example.com/system
    storage: copy
    destination_dir: /srv/vms
    postcopy: true
'''

RETURN = r'''
domain:
  description: The domain.
  returned: always
  type: str
  sample: web01
destination:
  description: O(destination_uri).
  returned: always
  type: str
  sample: qemu+ssh://vmfleet@hv2.example.com/system
route:
  description: How it moved - V(libvirt-p2p), or V(qemu-incoming) (a raw QEMU started at the destination).
  returned: when the domain ran here
  type: str
  sample: libvirt-p2p
tls:
  description: Whether the migration stream (and with O(storage=copy) the disk copies) went over TLS.
  returned: when the domain ran here
  type: bool
  sample: true
migration_uri:
  description: Where QEMU sent the migration stream.
  returned: when the domain ran here
  type: str
  sample: tcp://hv2.example.com
mode:
  description: V(precopy), V(auto-converge) or V(postcopy), what actually ran.
  returned: when a migration ran
  type: str
  sample: precopy
why:
  description: Why that mode ran.
  returned: when a migration ran
  type: str
  sample: precopy converged in 2 pass(es) within the downtime limit
downtime_ms:
  description: Milliseconds the guest was paused for the switch, as QEMU measured it.
  returned: when a migration ran
  type: int
  sample: 42
bytes:
  description: Bytes sent (memory and disks).
  returned: when a migration ran
  type: int
  sample: 281018368
duration_s:
  description: Seconds the migration took.
  returned: when a migration ran
  type: float
  sample: 3.2
rate_mib_s:
  description: Average rate, RV(bytes) per second.
  returned: when a migration ran
  type: float
  sample: 85.1
progress:
  description: Samples taken about every second - percent, rate, remaining MiB, pass, dirty rate, CPU throttle.
  returned: when a migration ran
  type: dict
  sample: {samples: [{t: 1.0, percent: 40.2, rate_mib_s: 80.3, remaining_mib: 150.0, iteration: 1}]}
disks:
  description: With O(storage=copy), each copied disk with its source and destination path.
  returned: when O(storage=copy)
  type: list
  elements: dict
  sample: [{target: vda, source: /var/lib/libvirt/images/db01.qcow2, destination: /srv/vms/db01.qcow2}]
snapshots:
  description:
    - A libvirt domain's snapshots in libvirt's metadata, which move with it.
    - A raw QEMU VM's instant and external snapshots in O(memory_dir), which move with it.
  returned: when a VM was planned to move
  type: list
  elements: str
  sample: [vmfleet-pre-upgrade-20261203]
snapshot_files:
  description: A libvirt domain's instant snapshots (memory file and manifest in O(memory_dir)), which move with it.
  returned: when a libvirt domain was planned to move
  type: list
  elements: str
  sample: [before-upgrade]
snapshots_carried:
  description:
    - The instant snapshots (and a raw QEMU VM's external snapshots) from O(memory_dir) that moved with the VM, or that
      a re-run finished carrying.
  returned: when a VM moved, or a re-run finished a carry
  type: list
  elements: str
  sample: [before-upgrade]
snapshots_kept:
  description: A raw QEMU VM's snapshots whose carry a re-run undid (the migration of the killed run had not completed).
  returned: when a re-run undid a carry
  type: list
  elements: str
  sample: [before-upgrade]
snapshots_defined:
  description:
    - The snapshots defined again at the destination after the move (or at the source after a failed one, or, on a
      re-run after a killed run, where the domain runs).
  returned: when a libvirt domain's snapshot metadata moved
  type: list
  elements: str
  sample: [vmfleet-pre-upgrade-20261203]
snapshots_defined_at:
  description: Where a re-run (or a failed migration) defined the snapshots again, as a libvirt URI.
  returned: when a re-run or a failure put the snapshot metadata back
  type: str
  sample: qemu:///system
source_state:
  description: After a failure, whether the domain still runs at the source.
  returned: failed
  type: str
  sample: running
error:
  description:
    - When the module failed, the class of the error, for a playbook to branch on without parsing C(msg)
      (C(msg) says what happened and what to do). C(ConnectionFailed) (the destination unreachable, or lost
      during the migration), C(DestinationProblem) (not enough memory, CPU incompatible, a copy running there,
      with O(tls) its certificates missing or of another CA), C(TargetProblem) (a destination image in the way),
      C(SpaceTooSmall), C(OperationTimeout) (cancelled, the VM runs on at the source), C(JobFailed), C(VmNotFound),
      C(InvalidArgument), C(CapabilityMissing) (with O(tls) this host's certificates missing or unusable),
      C(VmBusy) (another run held the VM for all of O(timeout)); from the shared engine also C(DiskNotFound),
      C(SnapshotNotFound), C(QmpCommandError), C(VmGone), C(SnapshotInconsistent), C(ImageCorrupt),
      C(MultifdStreamError).
    - Absent from a failure that is a bug of the collection (C(msg) then starts with C(vmfleet.kvm internal error)).
  returned: failed
  type: str
  sample: ConnectionFailed
'''

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.runner import run_module, vmfleet_module
from ansible_collections.vmfleet.kvm.plugins.module_utils.migrate.vm_migration import migrate_vm


def main():
    run_module(vmfleet_module(dict(
        destination_uri=dict(type='str', required=True),
        migration_address=dict(type='str'),
        destination_qmp_socket=dict(type='path'),
        destination_python=dict(type='path'),
        storage=dict(type='str', choices=['shared', 'copy'], default='shared'),
        destination_dir=dict(type='path'),
        persistent=dict(type='bool', default=True),
        undefine_source=dict(type='bool', default=True),
        bandwidth_mib_s=dict(type='int', default=0),
        max_downtime_ms=dict(type='int', default=0),
        parallel_connections=dict(type='int', default=1),
        auto_converge=dict(type='bool', default=False),
        postcopy=dict(type='bool', default=False),
        journal_dir=dict(type='path', default='/var/lib/vmfleet/journal'),
        memory_dir=dict(type='path', default='/var/lib/vmfleet/snapshots'),
        tls=dict(type='bool', default=False),
        tls_dir=dict(type='path'),
    ), relaunches=True), migrate_vm)


if __name__ == '__main__':
    main()
