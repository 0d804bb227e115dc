"""vqgen serve: the web page in headless Chromium types a prompt, clicks, and shows the images.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium`` Python package;
skipped with the reason when any is missing. Selenium is pointed at the installed browser and
driver, so it never downloads one.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("headless browser test needs chromium and chromedriver "
                "(apt-get install -y chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs the selenium package")
pytest.importorskip("fastapi", reason="vqgen serve needs fastapi")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.test_serve import metrics, running_server, tiny_pipeline  # noqa: E402
from vqgen.serve.app import ServeConfig, create_app  # noqa: E402


def record_guidance(monkeypatch) -> list[float]:
    """The per-image guidance scales requests are prefilled for the sampling loop with (continuous batching)."""
    from vqgen.sampling.continuous import ContinuousLoop

    seen, prepare = [], ContinuousLoop.prepare

    def recording(self, cond, num=None, generator=None, guidance=None):
        seen.extend(guidance.tolist())
        return prepare(self, cond, num, generator, guidance)

    monkeypatch.setattr(ContinuousLoop, "prepare", recording)
    return seen


@pytest.fixture
def browser(monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must not fetch anything
    profile = tempfile.mkdtemp(prefix="vqgen-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_generates_and_shows_images(browser, monkeypatch):
    guidance = record_guidance(monkeypatch)
    app = create_app(tiny_pipeline(), ServeConfig(api_key="page-key", max_n=4))
    with running_server(app) as base:
        browser.get(base + "/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "n")).options) == 4)  # limits loaded
        browser.find_element(By.ID, "apikey").send_keys("page-key")
        browser.find_element(By.ID, "prompt").send_keys("a green triangle")
        Select(browser.find_element(By.ID, "n")).select_by_value("3")
        assert browser.find_element(By.ID, "guidance").get_attribute("value") == "3"  # the model's default
        browser.find_element(By.ID, "guidance").clear()
        browser.find_element(By.ID, "guidance").send_keys("2.5")
        browser.find_element(By.ID, "generate").click()

        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.done img.result")) == 3)
        images = browser.find_elements(By.CSS_SELECTOR, "figure.done img.result")
        assert all(browser.execute_script("return arguments[0].naturalWidth", im) == 16 for im in images)
        assert all(im.get_attribute("alt") == "a green triangle" for im in images)
        links = browser.find_elements(By.CSS_SELECTOR, "a.download")
        assert len(links) == 3 and all(a.get_attribute("download").endswith(".png") for a in links)
        assert all(a.get_attribute("href").startswith("blob:") for a in links)
        assert guidance == [2.5, 2.5, 2.5]
        assert "done: 3 images" in browser.find_element(By.ID, "status").text
        assert metrics(base, key="page-key")["requests_served"] == 3

        # a wrong key shows the server's message instead of images
        browser.find_element(By.ID, "apikey").clear()
        browser.find_element(By.ID, "apikey").send_keys("wrong")
        Select(browser.find_element(By.ID, "n")).select_by_value("1")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: "invalid API key" in d.find_element(By.ID, "status").text)
