"""Issue 16 in the web page, in a real headless Chromium (the setup of tests/test_browser.py): open a georeferenced
tile, type what to find in it, and see the answer drawn on the map with its score. A screenshot is saved to
test-artifacts/browser-ground.png."""

import test_browser
from serverfixture import API_KEY
from test_browser import ARTIFACTS

browser = test_browser.browser  # the page tests' fixtures: one Chromium, one server over the shared-data index
server = test_browser.server


def test_find_in_this_tile_draws_the_answer_on_the_map(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(f"{server.url}/?api_key={API_KEY}")
    wait.until(lambda b: "tiles indexed" in b.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "query").send_keys("farmland with a lake")
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("200")
    browser.find_element(By.ID, "search-button").click()
    naip = wait.until(lambda b: b.find_elements(By.XPATH, "//div[@id='results']/div[contains(@class, 'hit')]"
                                                          "[div[contains(@title, '20200831')]]"))
    naip[0].click()
    wait.until(EC.visibility_of_element_located((By.ID, "ground-form")))
    browser.find_element(By.ID, "ground-expression").send_keys("a lake")
    browser.find_element(By.ID, "ground-all").click()
    browser.find_element(By.ID, "ground-button").click()
    wait.until(lambda b: b.find_element(By.ID, "ground-answer").text not in ("", "looking…"))
    answer = browser.find_element(By.ID, "ground-answer").text
    assert not answer.startswith("("), answer
    if "nothing here matches" in answer:  # an honest empty answer, with its best score
        assert "best score" in answer and not browser.find_elements(By.CSS_SELECTOR, "#map path.ground-region")
    else:
        assert "found" in answer and "best score" in answer, answer
        assert browser.find_elements(By.CSS_SELECTOR, "#map path.ground-region")  # drawn at its place on the map
        assert browser.find_element(By.CSS_SELECTOR, "#ground-answer a").get_attribute("href").endswith("preview.png")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser-ground.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] if hasattr(browser, "get_log") else []
    assert not errors, errors
