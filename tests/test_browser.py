"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium; no browser
download): load the page, type a query, see result thumbnails on the map, open one, read its caption, ask it a
question. A screenshot is saved to test-artifacts/browser.png.

CI installs Chromium (.ci/run); on a machine without it the test is skipped with that reason, except under CI,
where a missing browser is a failure."""

import os
import shutil
from pathlib import Path

import pytest

from serverfixture import API_KEY, Server, build_index

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        message = "headless Chromium is not installed: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def server(shared_data, tmp_path_factory):
    srv = Server(build_index(shared_data, tmp_path_factory.mktemp("browser") / "archive.idx"))
    yield srv
    srv.stop()


def test_search_see_on_map_open_caption_and_ask(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{server.url}/?api_key={API_KEY}")  # sets the key cookie the page's requests carry
    wait.until(lambda b: "tiles indexed" in b.find_element(By.ID, "status").text)
    box = browser.find_element(By.ID, "query")
    box.send_keys("green farmland with fields")
    browser.find_element(By.ID, "search-button").click()

    def loaded(selector):
        return lambda b: [img for img in b.find_elements(By.CSS_SELECTOR, selector)
                          if b.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)]

    thumbs = wait.until(lambda b: (found := loaded("#results .hit img")(b)) and len(found) == 12 and found)
    overlays = wait.until(loaded("#map img.hit-overlay"))  # thumbnails drawn at their footprints
    assert len(thumbs) == 12 and len(overlays) >= 1
    assert browser.find_elements(By.CSS_SELECTOR, "#map path.footprint")

    first = browser.find_element(By.CSS_SELECTOR, "#results .hit")
    first.click()
    wait.until(EC.visibility_of_element_located((By.ID, "detail")))
    wait.until(lambda b: b.find_element(By.ID, "caption").text not in ("", "…", "describing…"))
    caption = browser.find_element(By.ID, "caption").text
    assert not caption.startswith("(") and len(caption.split()) >= 3, caption
    assert "selected" in first.get_attribute("class")

    browser.find_element(By.ID, "question").send_keys("is there a road in this image?")
    browser.find_element(By.CSS_SELECTOR, "#ask-form button").click()
    wait.until(lambda b: b.find_element(By.ID, "answer").text not in ("", "thinking…"))
    assert not browser.find_element(By.ID, "answer").text.startswith("(")

    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser.png"))
    assert (ARTIFACTS / "browser.png").stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] if hasattr(browser, "get_log") else []
    assert not errors, errors


def test_search_with_rerank_ticked_asks_the_server_to_rerank(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{server.url}/?api_key={API_KEY}")
    wait.until(lambda b: "tiles indexed" in b.find_element(By.ID, "status").text)
    browser.execute_script("window.__urls = []; const f = window.fetch; window.fetch = (u, o) => "
                           "(window.__urls.push(String(u)), f(u, o));")
    browser.find_element(By.ID, "query").send_keys("green farmland with fields")
    browser.find_element(By.ID, "rerank").click()
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .hit")) == 12)
    urls = browser.execute_script("return window.__urls")
    assert any("/api/v1/search?" in u and "rerank=true" in u for u in urls), urls
    assert not browser.find_element(By.ID, "status").value_of_css_property("color").startswith("rgba(255, 180, 180")


def test_compare_a_tile_with_its_other_date_draws_the_changed_regions(browser, server):
    """Issue 15: select a NAIP tile, compare it with the same place's other date (the first choice offered), see
    the changed regions on the map and the change caption in the side panel, then ask how much changed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(f"{server.url}/?api_key={API_KEY}")
    wait.until(lambda b: "tiles indexed" in b.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "query").send_keys("farmland")
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("200")  # every tile: both NAIP dates of each window
    browser.find_element(By.ID, "search-button").click()
    naip = wait.until(lambda b: b.find_elements(By.XPATH, "//div[@id='results']/div[contains(@class, 'hit')]"
                                                          "[div[contains(@title, '20090818')]]"))
    naip[0].click()
    choice = wait.until(lambda b: [o for o in b.find_elements(By.CSS_SELECTOR, "#compare-with option")
                                   if o.get_attribute("value")])
    assert "20200831" in choice[0].text  # the other date of the same window overlaps most
    Select(browser.find_element(By.ID, "change-method")).select_by_value("cva")
    browser.find_element(By.ID, "compare-button").click()
    wait.until(lambda b: b.find_element(By.ID, "change-caption").text not in ("", "comparing…"))
    caption = browser.find_element(By.ID, "change-caption").text
    assert not caption.startswith("(") and "scene changed" in caption, caption
    assert browser.find_elements(By.CSS_SELECTOR, "#map path.change-region")  # regions drawn over the map
    assert "2009-08-18" in browser.find_element(By.ID, "change-dates").text
    wait.until(lambda b: b.execute_script("const i = document.getElementById('change-preview');"
                                          "return i.complete && i.naturalWidth > 0"))
    browser.find_element(By.ID, "change-question").send_keys("how much area changed?")
    browser.find_element(By.CSS_SELECTOR, "#ask-change-form button").click()
    wait.until(lambda b: b.find_element(By.ID, "change-answer").text not in ("", "thinking…"))
    assert "% of the scene changed" in browser.find_element(By.ID, "change-answer").text

    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser-change.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] if hasattr(browser, "get_log") else []
    assert not errors, errors
