"""`zscir serve` in a real browser: headless Chromium (Debian's chromium + chromium-driver) drives
the page against the command, started as a process of its own on a free loopback port."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import pytest
from runs import Process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    import selenium
except ImportError:  # pragma: no cover - the test extra installs it
    selenium = None

MISSING = ("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run "
           "installs them) and selenium (the test extra)")
ABSENT = CHROMIUM is None or DRIVER is None or selenium is None


@pytest.fixture(scope="module", autouse=True)
def browser_available():
    """Skipped where the browser is absent, except in CI (`CI` set), where that is a failure: the
    page must be tested there."""
    if ABSENT and os.environ.get("CI"):
        pytest.fail(f"the browser test cannot run in CI: it {MISSING}.")
    if ABSENT:
        pytest.skip(MISSING)

# a file name that is also HTML: the page must show it as text
TRICKY = "<img src=x onerror=alert(1)> & co.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, folder, stderr file) of `zscir serve --port 0` over a tiny folder index."""
    from conftest import image_folder as make_folder

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.galleries import FolderGallery
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.indexing import index_gallery
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    base = tmp_path_factory.mktemp("browser")
    folder = make_folder.__wrapped__(base)
    shutil.copy(min(folder.rglob("*.png")), folder / TRICKY)
    ctx = Context(store=ArtifactStore(base / "cache"), workers=0)
    key = index_gallery(ctx, load_backbone(ModelSpec("zscir-tiny-vit", "none")), FolderGallery(folder)).artifact.key
    # a process of its own (`runs.Process`): the page talks to it over a real socket
    proc = Process(["serve", "--index", key, "--port", "0", "--cache-dir", str(base / "cache"), "--device", "cpu"],
                   base / "serve")
    try:
        url = _wait_for_url(proc)
        yield url, folder, proc.err
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except AssertionError:  # pragma: no cover - a hung server (wait kills it)
            pass


def _wait_for_url(proc: Process, timeout: float = 180) -> str:
    import urllib.request

    end = time.time() + timeout
    while time.time() < end:
        assert not proc.finished(), f"zscir serve exited: {proc.err_text()}"
        found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", proc.err_text())
        if found:
            try:
                with urllib.request.urlopen(found.group(1) + "api/health", timeout=5) as r:
                    if r.status == 200:
                        return found.group(1)
            except OSError:
                pass
        time.sleep(0.3)
    raise AssertionError(f"zscir serve did not start in {timeout} s: {proc.err_text()}")


@pytest.fixture
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # the browser's profile, caches and settings (dconf) stay in this test's own folder
    home = tmp_path_factory.mktemp("browser-home")
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"),
           "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data")}
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", f"--user-data-dir={home / 'profile'}"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER, env=env), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _loaded_results(driver, k: int):
    from selenium.webdriver.common.by import By

    figs = driver.find_elements(By.CSS_SELECTOR, "#results figure.result")
    if len(figs) != k:
        return False
    imgs = [f.find_element(By.TAG_NAME, "img") for f in figs]
    return figs if all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                       for i in imgs) else False


def test_upload_query_then_walk_the_gallery(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, folder, log = server
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 11)
    # user strings are text: the tricky file name shows literally and adds no element
    captions = [f.text for f in browser.find_elements(By.CSS_SELECTOR, "#gallery figcaption")]
    assert TRICKY in captions and not browser.find_elements(By.CSS_SELECTOR, "#gallery figcaption img")

    browser.find_element(By.ID, "ref-file").send_keys(str(min(folder.rglob("*.jpg"))))
    browser.find_element(By.ID, "text").send_keys("make it red")
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("4")
    browser.find_element(By.ID, "submit").click()
    figs = wait.until(lambda d: _loaded_results(d, 4))
    summary = browser.find_element(By.ID, "summary").text
    assert summary.startswith('4 results for img1.jpg + "make it red": method sum'), summary
    assert all(re.fullmatch(r"#\d \S.*\n-?\d\.\d+", f.text) for f in figs), [f.text for f in figs]
    browser.save_screenshot(str(tmp_path / "results.png"))

    # clicking a result makes it the reference
    chosen = figs[1].get_attribute("data-id")
    figs[1].click()
    assert browser.find_element(By.ID, "ref-id").get_attribute("value") == chosen
    assert browser.find_element(By.ID, "ref-label").text == chosen
    assert browser.execute_script("return document.getElementById('ref-file').files.length") == 0
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "summary").text.startswith(f"4 results for {chosen} + ")
               and _loaded_results(d, 4))
    assert chosen not in [f.get_attribute("data-id") for f in _loaded_results(browser, 4)]

    # an error of the API is shown, with its hint
    browser.find_element(By.ID, "text").clear()
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "The modification text is empty." in browser.find_element(By.ID, "error-msg").text
    assert "make it red" in browser.find_element(By.ID, "error-hint").text
    browser.save_screenshot(str(tmp_path / "error.png"))
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert re.search(r"127\.0\.0\.1 POST /api/query 400 ", log.read_text())  # one line per request
