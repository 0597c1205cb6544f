"""The fleet report's HTML page, from a real run with faults, in a real browser:
headless Chromium from the Debian packages (scripts/setup-host.sh), driven by
Selenium through chromedriver. One playbook run over localhost (one raw QEMU VM
that is snapshotted, one QMP socket that is not there) and a hypervisor that
cannot be reached; then the page must load with no console error, its filter
must show exactly what failed, its timeline a bar per VM, its totals the run's."""

import json
import os

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from ansible_collections.vmfleet.kvm.plugins.plugin_utils.fleet_report_html import render
from rig.ansible_run import run_playbook

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
MISSING = '/nonexistent/vm.qmp'
UNREACHABLE = 'hv-unreachable'


@pytest.fixture
def browser(tmp_path):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail('%s is missing: make setup (scripts/setup-host.sh) installs chromium and chromium-driver' % path)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1400,1400',
                '--user-data-dir=%s' % (tmp_path / 'chromium')):
        options.add_argument(arg)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _inventory(tmp_path):
    # port 1 of a loopback address nobody listens on: refused at once, the host is unreachable
    path = tmp_path / 'inventory.ini'
    path.write_text('[hypervisors]\nlocalhost ansible_connection=local\n'
                    '%s ansible_connection=ssh ansible_host=127.0.0.9 ansible_port=1 ansible_user=nobody '
                    'ansible_ssh_common_args="-o ConnectTimeout=10 -o StrictHostKeyChecking=no -o BatchMode=yes"\n'
                    % UNREACHABLE)
    return str(path)


def _console(driver):
    """What the page said on the console that is a problem (errors, warnings, CSP refusals)."""
    return [e for e in driver.get_log('browser') if e.get('level') in ('SEVERE', 'WARNING')]


def _rows(driver):
    """The table's rows as drawn, read in one call (one WebDriver call per cell takes minutes for a thousand)."""
    return driver.execute_script("""
        return Array.prototype.map.call(document.querySelectorAll('#rows tbody tr'), function (tr) {
            return {kind: tr.dataset.kind, host: tr.dataset.host, vm: tr.dataset.vm, outcome: tr.dataset.outcome,
                    cells: Array.prototype.map.call(tr.cells, function (td) { return td.textContent; })};
        });""")


def test_the_html_report_of_a_run_with_an_unreachable_host_and_a_failed_vm_in_a_browser(vms, tmp_path, browser):
    good = vms.boot('qemu')
    reports = tmp_path / 'fleet-reports'
    proc = run_playbook('vmfleet.kvm.pre_upgrade_snapshot', inventory=_inventory(tmp_path),
                        extra_vars=dict(vmfleet_snapshot_name='html', vmfleet_snapshot_mode='instant',
                                        vmfleet_memory_dir=str(tmp_path / 'memory'),
                                        vmfleet_vms=[good.vm.qmp_socket, MISSING],
                                        pre_upgrade_snapshot_report_dir=str(tmp_path / 'host-reports')),
                        env={'ANSIBLE_CALLBACKS_ENABLED': 'vmfleet.kvm.fleet_report',
                             'VMFLEET_REPORT_DIR': str(reports)})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and 'Traceback' not in out, out[-4000:]

    files = sorted(os.listdir(str(reports)))
    assert [os.path.splitext(f)[1] for f in files] == ['.html', '.json', '.txt'], files
    for f in files:
        assert os.stat(str(reports / f)).st_mode & 0o777 == 0o600, f
    page = reports / files[0]
    assert 'vmfleet report page: %s' % page in proc.stdout, proc.stdout[-3000:]
    report = json.loads((reports / files[1]).read_text())
    hosts = report['hosts']
    # the run as the JSON has it: what the page must show
    assert hosts[UNREACHABLE]['status'] == 'unreachable' and hosts['localhost']['status'] == 'failed', hosts
    status = dict((v['vm'], v['status']) for v in hosts['localhost']['vms'])
    assert status == {good.vm.name: 'ok', MISSING: 'failed'}, status
    mine = next(v for v in hosts['localhost']['vms'] if v['vm'] == good.vm.name)
    assert mine['paused_ms'] is not None and mine['started_at'] < mine['ended_at'], mine

    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#rows tbody tr'))
    assert _console(browser) == []

    # every host and VM, failed and unreachable first
    rows = _rows(browser)
    assert len(rows) == 2 + 2, rows
    first = [r['outcome'] in ('failed', 'unreachable') for r in rows]
    assert first == sorted(first, reverse=True) and sum(first) == 3, rows

    # failed only: the failed VM, the host that failed because of it, and the unreachable host; nothing else
    browser.find_element(By.ID, 'failed-only').click()
    rows = _rows(browser)
    assert sorted((r['kind'], r['host'], r['vm'], r['outcome']) for r in rows) == [
        ('host', UNREACHABLE, '', 'unreachable'), ('host', 'localhost', '', 'failed'),
        ('vm', 'localhost', MISSING, 'failed')], rows
    assert browser.find_element(By.ID, 'count').text == '3 of 4 rows'
    browser.find_element(By.ID, 'failed-only').click()
    # by outcome, and by text
    Select(browser.find_element(By.ID, 'outcome')).select_by_value('ok')
    assert [(r['kind'], r['vm']) for r in _rows(browser)] == [('vm', good.vm.name)]
    Select(browser.find_element(By.ID, 'outcome')).select_by_value('')
    browser.find_element(By.ID, 'text').send_keys(MISSING)
    # the VM, and its host, whose message names it
    rows = _rows(browser)
    assert sorted((r['kind'], r['vm']) for r in rows) == [('host', ''), ('vm', MISSING)], rows
    assert all(MISSING in ' '.join(r['cells']) for r in rows), rows
    browser.find_element(By.ID, 'text').clear()
    browser.execute_script("document.getElementById('text').dispatchEvent(new Event('input'))")
    # a click on a column sorts by it, a second click reverses it
    header = browser.find_element(By.CSS_SELECTOR, 'th[data-key=vm]')
    header.click()
    header.click()
    vm_names = [r['vm'] for r in _rows(browser) if r['kind'] == 'vm']
    assert header.get_attribute('aria-sort') == 'descending' and vm_names == sorted(status, reverse=True), vm_names

    # the timeline: one bar per VM under its host, the snapshotted VM's with its pause
    for name, h in hosts.items():
        section = browser.find_element(By.CSS_SELECTOR, 'details.host-timeline[data-host="%s"]' % name)
        bars = section.find_elements(By.CSS_SELECTOR, '.bar')
        assert len(bars) == len(h['vms']), (name, len(bars))
        assert [lane.get_attribute('data-vm') for lane in section.find_elements(By.CSS_SELECTOR, '.lane')] \
            == [v['vm'] for v in h['vms']]
    lane = browser.find_element(By.CSS_SELECTOR, 'details[data-host=localhost] .lane[data-vm="%s"]' % good.vm.name)
    work, track = lane.find_element(By.CSS_SELECTOR, '.bar'), lane.find_element(By.CSS_SELECTOR, '.track')
    assert work.size['width'] > 2 and track.location['x'] <= work.location['x'] \
        and work.location['x'] + work.size['width'] <= track.location['x'] + track.size['width'] + 1, (work.rect, track.rect)
    assert len(lane.find_elements(By.CSS_SELECTOR, '.pause')) == 1

    # the totals
    totals = dict((d.get_attribute('data-total'), d.find_element(By.TAG_NAME, 'b').text)
                  for d in browser.find_elements(By.CSS_SELECTOR, '#totals > div'))
    assert dict((k, totals[k]) for k in ('hosts', 'hosts-ok', 'hosts-failed', 'hosts-unreachable', 'vms', 'vms-ok',
                                         'vms-failed')) == {
        'hosts': '2', 'hosts-ok': '0', 'hosts-failed': '1', 'hosts-unreachable': '1', 'vms': '2', 'vms-ok': '1',
        'vms-failed': '1'}, totals
    assert totals['wall'] == '%.1f' % report['duration_s'], totals
    assert totals['pause-sum'] == totals['pause-max'] == '%.1f' % mine['paused_ms'], totals
    assert _console(browser) == []


def test_a_large_fleet_s_page_draws_the_first_rows_and_the_failed_hosts_at_once_the_rest_on_demand(tmp_path, browser):
    """45 hosts of 50 VMs (no VM booted: the report is made up): the page must stay quick for a thousand hosts."""
    now = 1790000000.0
    hosts = {}
    for h in range(45):
        vms = [dict(vm='vm%d-%d' % (h, i), status='failed' if (h, i) == (7, 3) else 'ok', changed=True, wall_s=1.0,
                    paused_ms=20.0, workflow='pre_upgrade_snapshot', started_at=now + i, ended_at=now + i + 1, msg=None)
               for i in range(50)]
        hosts['hv%02d' % h] = dict(status='failed' if h == 7 else 'ok', workflows=[], vms=vms)
    page = tmp_path / 'large.html'
    page.write_text(render(dict(playbook='p.yml', started=now, ended=now + 60, duration_s=60.0, hosts=hosts,
                                totals=dict(hosts=45, vms=45 * 50))))
    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#rows tbody tr'))
    assert len(_rows(browser)) == 1000 and browser.find_element(By.ID, 'count').text \
        == '2295 of 2295 rows, the first 1000 shown'
    # the failed host and its failed VM come first, whatever was left out
    assert sorted((r['host'], r['vm']) for r in _rows(browser)[:2]) == [('hv07', ''), ('hv07', 'vm7-3')]
    # only the failed host's lanes are drawn; another host's when it is opened
    assert len(browser.find_elements(By.CSS_SELECTOR, '.bar')) == 50
    assert browser.find_elements(By.CSS_SELECTOR, 'details[data-host=hv07] .bar')
    browser.find_element(By.CSS_SELECTOR, 'details[data-host=hv30] summary').click()
    assert len(browser.find_elements(By.CSS_SELECTOR, 'details[data-host=hv30] .bar')) == 50
    browser.find_element(By.ID, 'show-all').click()
    assert len(_rows(browser)) == 2295 and not browser.find_element(By.ID, 'show-all').is_displayed()
    assert _console(browser) == []
