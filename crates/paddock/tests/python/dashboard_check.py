"""Drives paddock's dashboard in headless Chromium (Playwright, the system's
chromium), for the integration test:

    python dashboard_check.py PORT SCREENSHOT [TOKEN]

Loads /ui; with TOKEN, first checks that the page shows nothing without it, then
gives it. With OPERATOR_TOKEN in the environment (an instance without auth_token),
checks that the page shows its data at once, that a worker's log lines are asked
for with the operator token, and that once it is given they are shown. Waits for the worker rows, for the crash the test caused (SIGSEGV) in the
worker's row and in the timeline, and for the request-rate chart to move under
traffic this script sends; saves a screenshot. Prints one JSON line; exits 1 with
the reason on any failure.
"""
import json
import os
import sys
import threading
import urllib.request

from playwright.sync_api import sync_playwright

port, shot = int(sys.argv[1]), sys.argv[2]
token = sys.argv[3] if len(sys.argv) > 3 else None
operator = os.environ.get("OPERATOR_TOKEN")
base = f"http://127.0.0.1:{port}"
report = {}


def traffic(stop):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    while not stop.is_set():
        req = urllib.request.Request(f"{base}/v1/fake", data=b'{"op": "echo", "n": 1}',
                                     headers=headers)
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except Exception:
            pass


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{base}/ui")
    if token:
        page.wait_for_selector("#login", state="visible", timeout=15000)
        report["hidden_without_token"] = not page.is_visible("#main")
        assert report["hidden_without_token"], "data shown without the token"
        page.fill("#token", token)
        page.click("#login button")
    page.wait_for_function("document.querySelectorAll('tr.worker').length >= 3", timeout=20000)
    rows = page.eval_on_selector_all(
        "tr.worker", "rs => rs.map(r => [r.dataset.service, r.dataset.state, r.querySelector('.cause').textContent, r.textContent, r.querySelector('.gpu').textContent])")
    report["rows"] = rows
    report["instance"] = page.text_content("#instance")
    page.wait_for_function("document.querySelectorAll('tr.scaling').length >= 3", timeout=20000)
    report["scaling"] = page.eval_on_selector_all(
        "tr.scaling", "rs => rs.map(r => [r.dataset.service, r.dataset.loaded, r.textContent])")
    report["memory"] = page.text_content("#memory")
    # The crash the test caused: in the worker's row, and in the timeline.
    page.wait_for_function(
        "[...document.querySelectorAll('#timeline td')].some(td => td.textContent.includes('SIGSEGV'))",
        timeout=20000)
    page.wait_for_function(
        "[...document.querySelectorAll('tr.worker')].some(r => r.dataset.service === 'crashy' && r.querySelector('.cause').textContent.includes('SIGSEGV'))",
        timeout=20000)
    report["crash_shown"] = True
    if operator:
        # A worker's log lines: the page asks for the operator token, keeps its data.
        page.click("tr.worker[data-service='fake']")
        page.wait_for_selector("#login", state="visible", timeout=15000)
        assert page.is_visible("#main"), "the data was hidden"
        assert "paddock token" in page.text_content("#login-why")
        assert not page.is_visible("#logs"), "log lines shown without the token"
        page.fill("#token", operator)
        page.click("#login button")
        page.click("tr.worker[data-service='fake']")
        page.wait_for_function(
            "document.getElementById('logs').textContent.includes('spawned pid')", timeout=15000)
        report["logs_with_operator_token"] = True
    # Traffic moves the request-rate chart.
    stop = threading.Event()
    t = threading.Thread(target=traffic, args=(stop,))
    t.start()
    try:
        page.wait_for_function("parseFloat(document.getElementById('c-rate').dataset.last || '0') > 1",
                               timeout=20000)
        report["rate"] = float(page.eval_on_selector("#c-rate", "c => c.dataset.last"))
        page.wait_for_function("parseFloat(document.getElementById('c-p50').dataset.last || '0') > 0",
                               timeout=20000)
        report["p50_ms"] = float(page.eval_on_selector("#c-p50", "c => c.dataset.last"))
    finally:
        stop.set()
        t.join()
    page.screenshot(path=shot, full_page=True)
    browser.close()
print(json.dumps(report))
