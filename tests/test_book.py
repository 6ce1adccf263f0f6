"""The real book: every notebook through the runner (smoke), the strict build, and Chromium."""

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import nbformat
import pytest

from conftest import require_in_ci
from odesde.companion.book import toc_files

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ODESDE = [sys.executable, "-m", "odesde.companion.cli", "--root", str(REPO)]


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("odesde-build")


@pytest.fixture(scope="session")
def smoke_run(build_dir):
    completed = subprocess.run(
        [*ODESDE, "--build-dir", str(build_dir), "run", "--profile", "smoke"],
        capture_output=True, text=True, timeout=1800,  # four notebooks, about 4 minutes
    )
    return completed


@pytest.fixture(scope="session")
def html_dir(smoke_run, build_dir):
    assert smoke_run.returncode == 0, smoke_run.stdout + smoke_run.stderr
    completed = subprocess.run(
        [*ODESDE, "--build-dir", str(build_dir), "book"], capture_output=True, text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]
    return build_dir / "html"


def notebooks():
    return sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))


def test_every_notebook_runs_with_the_smoke_profile(smoke_run, build_dir):
    assert smoke_run.returncode == 0, smoke_run.stdout[-5000:] + smoke_run.stderr[-5000:]
    for name in notebooks():
        assert f"{name}  " in smoke_run.stdout  # its row in the closing table
        executed = nbformat.read(build_dir / "executed" / f"{name}.ipynb", as_version=4)
        assert executed.metadata["odesde"]["profile"] == "smoke"
        errors = [o for c in executed.cells if c.cell_type == "code"
                  for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors


def test_every_notebook_records_and_asserts_its_checks(smoke_run, build_dir):
    from odesde.companion.checks import GATING_KINDS, KINDS, ORACLES

    for name in notebooks():
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert "checks.assert_all()" in code[-1], name
        entries = json.loads((build_dir / "figures" / f"checks-{name}.json").read_text())["checks"]
        assert entries, name
        for entry in entries:
            assert entry["kind"] in KINDS, (name, entry)
            if entry["kind"] in GATING_KINDS + ("differs",):
                assert entry["oracle"] in ORACLES and entry["gates"] == (entry["kind"] != "differs")
            else:
                assert entry["passed"] is None and not entry["gates"]


def test_overview_counts_equal_the_checks_files(html_dir, build_dir):
    from odesde.companion.checks import STATUSES, count_statuses

    page = (build_dir / "book" / "book" / "results.md").read_text()
    for name in notebooks():
        entries = json.loads((build_dir / "figures" / f"checks-{name}.json").read_text())["checks"]
        counts = count_statuses(entries)
        row = f"| {{doc}}`../notebooks/{name}` | `smoke` | " + " | ".join(
            str(counts[k]) for k in STATUSES) + " |"
        assert row in page, (row, page[:3000])
        assert sum(counts.values()) == len(entries)


def test_overview_links_reach_the_chapters_check_rows(html_dir):
    import re

    results = (html_dir / "book" / "results.html").read_text()
    for name in notebooks():
        chapter = (html_dir / "notebooks" / f"{name}.html").read_text()
        targets = set(re.findall(rf'href="../notebooks/{name}.html#(check-\d+)"', results))
        assert targets, name
        missing = [t for t in targets if f'id="{t}"' not in chapter]
        assert not missing, (name, missing[:5])


def test_every_notebook_is_in_the_book():
    listed = {entry.split("/", 1)[1] for entry in toc_files_repo() if entry.startswith("notebooks/")}
    assert listed == set(notebooks())


def toc_files_repo():
    from odesde.companion.pipeline import Project

    return toc_files(Project.at(REPO))


def test_committed_notebooks_carry_no_outputs():
    for name in notebooks():
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name


def test_strict_build_writes_every_page(html_dir):
    assert (html_dir / "index.html").is_file()
    for entry in toc_files_repo():
        assert (html_dir / f"{entry}.html").is_file(), entry
    # MathJax is served by the book itself.
    assert (html_dir / "_static" / "mathjax" / "tex-chtml.js").is_file()


def test_reproducibility_page_tables_the_run(html_dir, build_dir):
    runs = (build_dir / "book" / "book" / "_generated" / "runs.md").read_text()
    for name in notebooks():
        assert f"../notebooks/{name}`" in runs
    seconds = [float(line.split("|")[3]) for line in runs.splitlines()
               if line.startswith("| {doc}")]
    total = float(runs.split("**total**")[1].split("**")[1])
    assert abs(total - sum(seconds)) < 0.1 * len(seconds)
    assert "Executed on: " in runs and " cores, " in runs and "`--jobs 1`" in runs


# --- headless Chromium ----------------------------------------------------------------------

def _chromium():
    for browser, driver in (("/usr/bin/chromium", "/usr/bin/chromedriver"),):
        if Path(browser).exists() and Path(driver).exists():
            return browser, driver
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    require_in_ci("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="session")
def server(html_dir):
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_for_mathjax(driver):
    # MathJax loads deferred: wait for it to start, then for its first typesetting pass.
    driver.set_script_timeout(60)
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const started = Date.now();
        (function poll() {
          if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
            MathJax.startup.promise.then(() => done(true)).catch(() => done(false));
          } else if (Date.now() - started > 30000) {
            done(false);
          } else {
            setTimeout(poll, 50);
          }
        })();
        """
    )


PAGE_REPORT = """
const images = [...document.querySelectorAll('main img')].map(img => ({
  src: img.currentSrc || img.src, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight}));
const links = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
const rawMath = [...document.querySelectorAll('main .math')].filter(el => !el.querySelector('mjx-container')).length;
return {images, links, typeset: document.querySelectorAll('mjx-container').length,
        mathBlocks: document.querySelectorAll('main .math').length, rawMath,
        unresolved: [...document.querySelectorAll('main .xref.std-ref, main .problematic')].filter(
            el => el.classList.contains('problematic')).map(el => el.textContent),
        title: document.title};
"""


def test_every_page_in_chromium(server, browser, html_dir, build_dir):
    pages = [f"{entry}.html" for entry in toc_files_repo()]
    screenshots = REPO / "_build" / "screenshots"  # kept for review (see the README)
    screenshots.mkdir(parents=True, exist_ok=True)
    problems = []
    for page in pages:
        browser.get(urljoin(server, page))
        _wait_for_mathjax(browser)
        report = browser.execute_script(PAGE_REPORT)
        for image in report["images"]:
            if not (image["complete"] and image["width"] > 0 and image["height"] > 0):
                problems.append(f"{page}: image {image['src']} did not load")
        if report["mathBlocks"] and (report["typeset"] == 0 or report["rawMath"]):
            problems.append(f"{page}: math not typeset ({report['rawMath']} raw blocks)")
        if report["unresolved"]:
            problems.append(f"{page}: unresolved references {report['unresolved']}")
        for href in report["links"]:
            problems += _check_link(html_dir, page, href)
        for entry in browser.get_log("browser"):
            if entry["level"] == "SEVERE":
                problems.append(f"{page}: console error {entry['message']}")
        if page.startswith("notebooks/"):
            _screenshot_first_figure(browser, screenshots / f"{Path(page).stem}.png")
    assert not problems, "\n".join(problems)


def _check_link(html_dir, page, href):
    parsed = urlparse(href)
    if parsed.scheme in ("http", "https", "mailto") or href.startswith("javascript:"):
        return []
    target = (html_dir / page).parent / parsed.path if parsed.path else html_dir / page
    target = target.resolve()
    if not target.exists():
        return [f"{page}: broken link {href}"]
    if parsed.fragment and target.suffix == ".html":
        text = target.read_text(errors="replace")
        if f'id="{parsed.fragment}"' not in text:
            return [f"{page}: link {href} names a missing anchor"]
    return []


def _screenshot_first_figure(driver, path):
    from selenium.webdriver.common.by import By

    figures = driver.find_elements(By.CSS_SELECTOR, "main figure")
    if figures:
        driver.execute_script("arguments[0].scrollIntoView();", figures[0])
        figures[0].screenshot(str(path))
        assert path.stat().st_size > 0
