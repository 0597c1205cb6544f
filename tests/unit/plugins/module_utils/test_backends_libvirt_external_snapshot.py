"""backends/libvirt/external_snapshot.py: what a domain's definition tells of its firmware and labels."""

import xml.etree.ElementTree as ET

from ansible_collections.vmfleet.kvm.plugins.module_utils.backends.libvirt import external_snapshot as ext


class _Vm(object):
    def __init__(self, xml):
        self._xml = xml
        self.dom = None

    def xml(self, inactive=False):
        return ET.fromstring(self._xml)


def _os(loader, nvram):
    return "<domain><os>%s%s</os></domain>" % (loader, nvram)


def test_pflash_with_a_raw_nvram_refuses_internal_snapshots():
    pflash = "<loader readonly='yes' type='pflash' format='raw'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
    raw = ext.LibvirtExternalSnapshots(_Vm(_os(pflash, "<nvram format='raw'>/var/lib/x_VARS.fd</nvram>")))
    assert raw.nvram() == ('/var/lib/x_VARS.fd', 'raw')
    assert 'raw NVRAM (/var/lib/x_VARS.fd)' in raw.internal_refusal()
    qcow2 = ext.LibvirtExternalSnapshots(_Vm(_os(pflash, "<nvram format='qcow2'>/var/lib/x_VARS.qcow2</nvram>")))
    assert qcow2.internal_refusal() is None
    bios = ext.LibvirtExternalSnapshots(_Vm("<domain><os><type>hvm</type></os></domain>"))
    assert bios.nvram() == (None, None) and bios.internal_refusal() is None


def test_dac_label_and_the_directory_qemu_cannot_enter(tmp_path):
    dom = ET.fromstring("<domain><seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+64055</label>"
                        "</seclabel></domain>")
    assert ext._dac_label(dom) == (64055, 64055)
    closed = tmp_path / 'closed'
    inner = closed / 'overlays'
    inner.mkdir(parents=True)
    closed.chmod(0o700)
    tmp_path.chmod(0o755)
    assert ext._reachable(str(inner), 64055, 64055) == str(closed)
    closed.chmod(0o711)
    inner.chmod(0o755)
    # pytest's own temporary root above may be closed: only the part under it is judged here
    blocked = ext._reachable(str(inner), 64055, 64055)
    assert blocked is None or not blocked.startswith(str(tmp_path))
