"""The HTML fleet report's page: what a run's strings can and cannot do in it.
(It is drawn and clicked in a real browser by tests/system/test_fleet_report_html.py.)"""

import base64
import hashlib
import json
import re

from ansible_collections.vmfleet.kvm.plugins.plugin_utils.fleet_report_html import SCRIPT, render

EVIL_VM = '<img src=x onerror=alert(1)>'
EVIL_MSG = 'gone </script><script>alert(2)</script> <!-- & \u2028 \u2029 "quoted" \'single\''


def _report():
    return dict(playbook='pre_upgrade_snapshot.yml', started=1790000000.0, ended=1790000010.0, duration_s=10.0,
                totals=dict(hosts=1, vms=2),
                hosts={'hv<1>': dict(status='failed', msg=EVIL_MSG, task='Fail', workflows=[], vms=[
                    dict(vm=EVIL_VM, status='ok', changed=True, wall_s=1.0, paused_ms=3.5, workflow='x',
                         started_at=1790000001.0, ended_at=1790000002.0, msg=None),
                    dict(vm='/nonexistent/vm.qmp', status='failed', changed=False, wall_s=None, paused_ms=None,
                         workflow='x', started_at=None, ended_at=None, msg=EVIL_MSG)])})


def _blocks(page, tag):
    return re.findall(r'<%s\b([^>]*)>(.*?)</%s>' % (tag, tag), page, re.S)


def test_the_run_s_strings_stay_data_inside_one_json_block_and_come_back_intact():
    report = _report()
    page = render(report)
    for raw in (EVIL_VM, '</script><script>alert(2)', '<!--', 'hv<1>', '\u2028', '\u2029'):
        assert raw not in page, raw
    scripts = _blocks(page, 'script')
    # exactly the data block and the page's own script: the message's </script> closed nothing
    assert [attrs for attrs, code in scripts] == [' type="application/json" id="fleet-data"', ''], scripts
    assert json.loads(scripts[0][1]) == report
    assert scripts[1][1] == SCRIPT
    assert '<img' not in page


def test_the_page_fetches_nothing_and_its_policy_allows_only_its_own_style_and_script():
    page = render(_report())
    (data,) = re.findall(r'<script type="application/json" id="fleet-data">.*?</script>', page, re.S)
    code = page.replace(data, '')
    assert not re.search(r'https?:|//[a-z]|@import|url\(|<link|<iframe|<img|\bsrc=|fetch\(|XMLHttpRequest', code), \
        'the page would load something'
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and 'unsafe' not in csp, csp
    style = _blocks(page, 'style')[0][1]
    for code in (style, SCRIPT):
        digest = base64.b64encode(hashlib.sha256(code.encode('utf-8')).digest()).decode()
        assert "'sha256-%s'" % digest in csp, 'the browser would block the page\'s own style or script'


def test_the_script_puts_data_in_the_page_as_text_never_as_markup():
    for sink in ('innerHTML', 'outerHTML', 'insertAdjacentHTML', 'document.write', 'eval(', 'Function(',
                 'setAttribute(\'style', 'setAttribute("style', 'on' + 'click='):
        assert sink not in SCRIPT, sink
    assert 'textContent' in SCRIPT
