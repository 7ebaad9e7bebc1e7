"""The web dashboard in a real headless Chromium (Playwright) against a real API + toy worker.

The list page shows a submitted problem and submits one from pasted JSON; the problem page's
charts grow live while a hard problem runs and its Cancel button stops it; a solved problem
shows its solution (screenshot: the pytest tmp dir, and docs/img/dashboard.png when
SDPO_UPDATE_SCREENSHOT=1); another tenant's problem is unreachable; the key never shows up
in a URL. Needs Debian's chromium (`make system-deps`) and the playwright package.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_fixtures import Service

from sdpo_core.toy import HARD_SUITE, make_problem

pytest_plugins = ["service_fixtures"]
pytestmark = pytest.mark.slow

from playwright import sync_api  # noqa: E402 - after the plugins

CHROMIUM = os.environ.get("SDPO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "img" / "dashboard.png"

# Per-chart point counts, read from the page's Chart.js objects.
CHART_COUNTS = """() => {
  const d = window.sdpoDashboard;
  if (!d) return null;
  const [fail, pass] = d.charts.attempts.data.datasets;
  return {
    attempts: fail.data.length + pass.data.length,
    passed: pass.data.length,
    loss: d.charts.loss.data.datasets[0].data.length,
    kl: d.charts.kl.data.datasets[0].data.length,
    grad: d.charts.grad.data.datasets[0].data.length,
    events: d.state.events,
  };
}"""


@pytest.fixture(scope="module")
def browser(sdpo_service: Service) -> Iterator[Any]:
    """Chromium, started after the service (Playwright's sync API holds an event loop)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM} (make system-deps installs it)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Tab:
    """A browser context + page; records every request URL and page error."""

    def __init__(self, browser: Any, svc: Service, key: str | None) -> None:
        self.svc = svc
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        if key is not None:
            script = f"sessionStorage.setItem('sdpo.apiKey', {json.dumps(key)})"
            self.context.add_init_script(script)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def goto(self, path: str) -> Any:
        self.page.goto(self.svc.base_url + path)
        return self.page

    def counts(self) -> dict[str, int] | None:
        return self.page.evaluate(CHART_COUNTS)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tabs(browser: Any, sdpo_service: Service) -> Iterator[Any]:
    """tabs(key) opens a fresh browser context whose session already holds `key`."""
    opened: list[Tab] = []

    def open_tab(key: str | None = sdpo_service.api_key) -> Tab:
        tab = Tab(browser, sdpo_service, key)
        opened.append(tab)
        return tab

    yield open_tab
    for tab in opened:
        assert not tab.errors, tab.errors
        leaked = [u for u in tab.urls for k in _keys(sdpo_service) if k in u]
        assert not leaked, f"an API key appeared in a URL: {leaked}"
        tab.close()


def _keys(svc: Service) -> list[str]:
    return [svc.api_key, *getattr(svc, "_ui_extra_keys", [])]


def submit(svc: Service, problem: dict[str, Any], key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key or svc.api_key}"}
    r = httpx.post(f"{svc.base_url}/v1/problems", json=problem, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def get(svc: Service, pid: str) -> dict[str, Any]:
    with svc.client() as c:
        return c.get(f"/v1/problems/{pid}").json()


def wait_terminal(svc: Service, pid: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = get(svc, pid)
        if p["status"] in {"solved", "exhausted", "cancelled", "failed"}:
            return p
        time.sleep(0.5)
    raise AssertionError(f"{pid} did not finish in {timeout}s")


def test_key_form_list_and_submit(tabs: Any, sdpo_service: Service) -> None:
    """Key entered once in the form; the list shows a problem; pasted JSON is submitted."""
    problem = make_problem(5, 1, max_attempts=4, max_seconds=60)
    pid = submit(sdpo_service, problem)
    tab = tabs(None)
    page = tab.goto("/ui")
    page.locator("#login").wait_for(state="visible")
    page.fill("#login-key", "sdpo_wrong_key")
    page.click("#login button[type=submit]")
    page.locator("#login-error").wait_for(state="visible")  # a bad key is refused

    page.fill("#login-key", sdpo_service.api_key)
    page.click("#login button[type=submit]")
    row = page.locator(f"tr[data-id='{pid}']")
    row.wait_for()
    assert row.locator(".badge").inner_text() in {"queued", "running", "solved", "exhausted"}
    assert page.evaluate("sessionStorage.getItem('sdpo.apiKey')") == sdpo_service.api_key

    # Submit from pasted JSON: lands on the new problem's page.
    page.fill("#submit-json", "{not json")
    page.click("#submit-form button[type=submit]")
    assert "Not valid JSON" in page.locator("#submit-error").inner_text()
    bad = {"prompt": "", "verifier": {"kind": "table", "cases": {"q": "7"}}}
    page.fill("#submit-json", json.dumps(bad))
    page.click("#submit-form button[type=submit]")
    page.locator("#submit-error").filter(has_text="prompt").wait_for()  # the API's 422
    page.fill("#submit-json", json.dumps(make_problem(6, 1, max_attempts=4, max_seconds=60)))
    page.click("#submit-form button[type=submit]")
    page.wait_for_url("**/ui/problems/prb_*")
    new_pid = page.url.rsplit("/", 1)[1]
    page.locator("#status").wait_for()
    assert get(sdpo_service, new_pid)["spec"]["metadata"]["seed"] == 6
    for p in (pid, new_pid):
        wait_terminal(sdpo_service, p)
    page.goto(sdpo_service.base_url + "/ui")  # the key survives navigation (same session)
    page.locator(f"tr[data-id='{new_pid}']").wait_for()


def test_charts_grow_live_and_cancel(tabs: Any, sdpo_service: Service) -> None:
    """A hard problem: attempts and per-step charts grow while the page is open; Cancel."""
    problem = {**HARD_SUITE[1], "budget": {"max_attempts": 4000, "max_seconds": 600}}
    problem["sdpo"] = {**problem.get("sdpo", {}), "samples_per_step": 4}
    pid = submit(sdpo_service, problem)
    try:
        tab = tabs()
        page = tab.goto(f"/ui/problems/{pid}")
        page.locator("#problem").wait_for(state="visible")

        seen: list[dict[str, int]] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            counts = tab.counts()
            if counts and (not seen or counts != seen[-1]):
                seen.append(counts)
            # steps can be faster than the page opens: wait for three states seen live,
            # not for a fixed step count that may already be behind us
            if len(seen) >= 3 and seen[-1]["loss"] > seen[0]["loss"]:
                break
            assert page.locator("#status.solved, #status.exhausted").count() == 0, "finished early"
            time.sleep(0.2)
        else:
            raise AssertionError(f"charts did not grow: {seen}")
        attempts = [c["attempts"] for c in seen]
        # live: at least three different chart states seen while it ran, attempts only growing
        assert len(seen) >= 3 and attempts == sorted(attempts) and attempts[-1] > attempts[0], seen
        last = seen[-1]
        assert last["kl"] == last["loss"] and last["grad"] >= last["loss"] - 1
        # an adapter exists after a step (the page renders it on its next tick, within 1 s)
        page.wait_for_function(
            "() => !document.getElementById('download').disabled", timeout=10_000
        )
        assert page.locator("#feedback").inner_text() not in {"", "–"}
        assert page.locator("#live").inner_text() == "● live"
        # the per-step charts join steps with straight segments (no smoothing overshoot)
        drawn = page.evaluate(
            """() => ["loss", "kl", "grad"].map((name) => {
                 const chart = window.sdpoDashboard.charts[name];
                 const meta = chart.getDatasetMeta(0);
                 return [meta.dataset.options.tension, meta.dataset.options.cubicInterpolationMode];
               })"""
        )
        assert all(tension == 0 and mode != "monotone" for tension, mode in drawn), drawn
        assert page.locator("#s-method").inner_text() == "sdpo"

        page.click("#cancel")
        page.locator("#status.cancelled").wait_for(timeout=120_000)
        assert "Cancelled after" in page.locator("#outcome").inner_text()
        assert page.locator("#cancel").is_disabled()
        assert get(sdpo_service, pid)["status"] == "cancelled"
    finally:  # never leave the hard problem running for the next test
        with sdpo_service.client() as c:
            c.post(f"/v1/problems/{pid}/cancel")


def test_solved_problem_shows_solution(tabs: Any, sdpo_service: Service, tmp_path: Path) -> None:
    """Watch a toy problem to `solved`: the solution is shown, the passing attempt is in the
    attempts chart, every step is plotted, the adapter downloads; save a screenshot."""
    problem = make_problem(11, 2, max_attempts=256, max_seconds=300)
    problem["sdpo"] = {**problem["sdpo"], "samples_per_step": 4}
    pid = submit(sdpo_service, problem)
    tab = tabs()
    page = tab.goto(f"/ui/problems/{pid}")
    page.locator("#problem").wait_for(state="visible")
    seen: list[int] = []  # attempts plotted, sampled while the problem runs
    deadline = time.monotonic() + 300
    while page.locator("#status.solved, #status.exhausted").count() == 0:
        assert time.monotonic() < deadline, f"not finished in time: {seen[-5:]}"
        seen.append((tab.counts() or {}).get("attempts", 0))
        time.sleep(0.25)
    p = get(sdpo_service, pid)
    assert p["status"] == "solved", f"toy problem not solved: {p['attempts']} attempts"
    assert seen == sorted(seen), seen
    if p["steps"] >= 2:  # it ran for a while: the page saw it grow, not just the end
        assert len(set(seen)) >= 3 and seen[0] < p["attempts"], seen

    page.locator("#solution-card").wait_for(state="visible")
    assert page.locator("#solution").text_content() == p["solution"]
    assert f"attempt {p['solved_attempt']} of" in page.locator("#solution-meta").inner_text()
    page.wait_for_function(
        "n => window.sdpoDashboard.charts.attempts.data.datasets[0].data.length"
        " + window.sdpoDashboard.charts.attempts.data.datasets[1].data.length === n",
        arg=p["attempts"],
    )
    counts = tab.counts()
    assert counts and counts["passed"] == 1 and counts["loss"] == p["steps"], counts
    assert page.locator("#s-attempts").inner_text() == str(p["attempts"])
    assert page.locator("#cancel").is_disabled()
    if p["adapter_version"]:
        assert page.locator("#s-adapter").inner_text() == f"v{p['adapter_version']}"
        with page.expect_download() as info:
            page.click("#download")
        assert info.value.suggested_filename == f"{pid}-adapter-v{p['adapter_version']}.tar.gz"

    page.mouse.move(0, 0)  # no hover state in the picture
    page.wait_for_timeout(300)  # let the last chart frame paint
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SDPO_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_other_tenant_cannot_reach(tabs: Any, sdpo_service: Service) -> None:
    """Tenant B, with A's problem id: the page shows "not found", no data; every API path
    the page could call answers 404; A's problems are not in B's list."""
    secret = "Problem 424242: a prompt only tenant A may read."
    problem = {**make_problem(8, 1, max_attempts=4, max_seconds=60), "prompt": secret}
    pid = submit(sdpo_service, problem)
    with ThreadPoolExecutor(1) as pool:  # new_key runs asyncio; Playwright holds this loop
        key_b = pool.submit(sdpo_service.new_key, "tenant-b").result()
    sdpo_service._ui_extra_keys = [key_b]  # type: ignore[attr-defined]

    html = httpx.get(f"{sdpo_service.base_url}/ui/problems/{pid}").text
    assert secret not in html  # the page itself carries no tenant data

    tab = tabs(key_b)
    page = tab.goto(f"/ui/problems/{pid}")
    page.locator("#not-found").wait_for(state="visible")
    assert page.locator("#problem").is_hidden()
    assert secret not in page.content()
    statuses = page.evaluate(
        """async (pid) => {
          const headers = {Authorization: `Bearer ${sessionStorage.getItem('sdpo.apiKey')}`};
          const status = async (path, method = 'GET') =>
            (await fetch(`/v1/problems/${pid}${path}`, {method, headers})).status;
          const out = {};
          for (const p of ['', '/events', '/attempts', '/adapter']) out[p] = await status(p);
          out.cancel = await status('/cancel', 'POST');
          return out;
        }""",
        pid,
    )
    assert set(statuses.values()) == {404}, statuses

    page = tab.goto("/ui")
    page.locator("#problems-empty").wait_for(state="visible")  # B has no problems
    assert page.locator(f"tr[data-id='{pid}']").count() == 0
    assert get(sdpo_service, pid)["cancel_requested"] is False
    wait_terminal(sdpo_service, pid)


def test_suite_page_shows_the_report_live(tabs: Any, sdpo_service: Service) -> None:
    """A suite's page: progress, a discovery@k curve per method, the summary and per-problem
    tables; its runs' pages link back to it."""
    problems = [make_problem(seed, 1, max_attempts=16) for seed in (11, 12)]
    for p in problems:
        p["sdpo"] = {**p["sdpo"], "samples_per_step": 4}
    with sdpo_service.client() as c:
        suite = c.post(
            "/v1/suites", json={"problems": problems, "methods": ["sdpo", "best_of_k"]}
        ).json()
    tab = tabs()
    page = tab.goto(f"/ui/suites/{suite['id']}")
    page.locator("#suite").wait_for(state="visible")
    page.locator("#suite-status.solved").wait_for(timeout=300_000)  # done: every run finished
    assert page.locator("#suite-progress").inner_text() == "4 / 4"
    labels = page.evaluate("() => window.sdpoDashboard.chart.data.datasets.map((d) => d.label)")
    assert labels == ["sdpo", "best_of_k"]
    rows = page.locator("#suite-summary-body tr")
    assert rows.count() == 2 and rows.nth(0).locator("td").nth(0).inner_text() == "sdpo"
    assert page.locator("#suite-table-body tr").count() == 2
    assert page.locator("#suite-cancel").is_disabled()
    run_page = tab.goto(f"/ui/problems/{suite['runs'][0]['problem_id']}")
    run_page.locator("#s-suite-stat").wait_for(state="visible")
    assert run_page.locator("#s-suite").get_attribute("href") == f"/ui/suites/{suite['id']}"
