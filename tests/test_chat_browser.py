"""Issues 17 and 18 in the web page, in a real headless Chromium (the setup of tests/test_browser.py): talk to an
open tile (a follow-up answered from the conversation) and ask the served knowledge base, whose citations are
links that open their evidence. Screenshots are saved to test-artifacts/browser-chat.png and browser-kb.png."""

import pytest

import test_browser
from serverfixture import API_KEY, Server, build_index
from test_browser import ARTIFACTS

browser = test_browser.browser  # one Chromium for this module


@pytest.fixture(scope="module")
def server(shared_data, tmp_path_factory):
    """``terravl serve`` over the shared-data index and a knowledge base of the shipped scene-class descriptions."""
    import terravl.models as m
    from terravl.kb import SCENE_CLASSES, build_kb

    folder = tmp_path_factory.mktemp("chat-browser")
    kb = folder / "scenes.kb"
    build_kb([SCENE_CLASSES], m.load("terravl-default"), kb)
    srv = Server(build_index(shared_data, folder / "archive.idx"), "--kb", str(kb))
    yield srv
    srv.stop()


def _open_naip_tile(browser, wait):
    from selenium.webdriver.common.by import By

    browser.get(f"{browser.base}/?api_key={API_KEY}")
    wait.until(lambda b: "tiles indexed" in b.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "query").send_keys("farmland with a lake")
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("200")
    browser.find_element(By.ID, "search-button").click()
    naip = wait.until(lambda b: b.find_elements(By.XPATH, "//div[@id='results']/div[contains(@class, 'hit')]"
                                                          "[div[contains(@title, '20200831')]]"))
    naip[0].click()


def _say(browser, wait, text: str) -> str:
    """Send one chat message and wait for its answer (the last line of the conversation)."""
    from selenium.webdriver.common.by import By

    before = len(browser.find_elements(By.CSS_SELECTOR, "#chat-log li"))
    browser.find_element(By.ID, "chat-instruction").send_keys(text)
    browser.find_element(By.ID, "chat-button").click()

    from selenium.common.exceptions import StaleElementReferenceException

    def answered(b):
        try:  # the page replaces the "…" line by the answer: a line read mid-update is stale, so look again
            lines = b.find_elements(By.CSS_SELECTOR, "#chat-log li")
            text = lines[-1].text if len(lines) > before + 1 else ""
        except StaleElementReferenceException:
            return False
        return text if text not in ("…", "") else False

    return wait.until(answered)


def test_talk_to_a_tile_and_ask_the_knowledge_base_with_citations(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)
    browser.base = server.url
    _open_naip_tile(browser, wait)
    first = _say(browser, wait, "where is the lake?")
    assert "locate" in first and not first.startswith("("), first
    follow = _say(browser, wait, "how big is it?")
    assert not follow.startswith("("), follow
    if browser.find_elements(By.CSS_SELECTOR, "#map path.chat-region"):  # a region was found and drawn
        assert "m²" in follow or "km²" in follow or "pixels" in follow, follow
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser-chat.png"))

    # the knowledge-base panel shows only because the server serves one
    panel = browser.find_element(By.ID, "kb-panel")
    assert panel.is_displayed()
    browser.find_element(By.ID, "kb-question").send_keys("what does a golf course look like from above?")
    browser.find_element(By.ID, "kb-button").click()
    wait.until(lambda b: b.find_element(By.ID, "kb-answer").text not in ("", "looking it up…"))
    answer = browser.find_element(By.ID, "kb-answer").text
    assert "golf" in answer.lower() and not answer.startswith("("), answer
    citations = browser.find_elements(By.CSS_SELECTOR, "#kb-answer a.cite")
    assert citations and citations[0].text.startswith("[")
    number = citations[0].text.strip("[]")
    citations[0].click()
    cited = browser.find_element(By.ID, f"kb-evidence-{number}")
    assert "cited" in cited.get_attribute("class") and "golf" in cited.text.lower()
    browser.save_screenshot(str(ARTIFACTS / "browser-kb.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] if hasattr(browser, "get_log") else []
    assert not errors, errors
