"""The browser chat page in headless Chromium (Debian's chromium + chromium-driver, via Selenium):
type a question, watch the answer stream in, stop it; the page also works with an API key."""

from __future__ import annotations

import shutil
import tempfile
import time

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(
            "chromium and chromedriver are needed for the page test: "
            "apt-get install chromium chromium-driver (.ci/run installs them)"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="llama3-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(cond, timeout=60.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def answers(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#messages .assistant")


def test_chat_streams_and_stops(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    wait(lambda: browser.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "system").send_keys("You are a helpful assistant.")
    temp = browser.find_element(By.ID, "temperature")
    temp.clear()
    temp.send_keys("0")
    browser.find_element(By.ID, "prompt").send_keys("What is the capital of France?")
    browser.find_element(By.ID, "send").click()
    # the answer grows while it streams, then the page reports its speed
    first = wait(lambda: answers(browser) and answers(browser)[-1].text)
    wait(lambda: "tokens/s" in browser.find_element(By.ID, "stats").text)
    final = answers(browser)[-1].text
    assert final.startswith(first) and "Paris" in final
    assert browser.find_element(By.ID, "send").is_enabled()

    # a long answer is stopped halfway: it keeps what came, marked as stopped
    box = browser.find_element(By.ID, "prompt")
    box.send_keys("Write a very long story about a dragon, with many chapters.")
    browser.find_element(By.ID, "send").click()
    wait(lambda: len(answers(browser)) == 2 and len(answers(browser)[-1].text) > 20)
    stop = browser.find_element(By.ID, "stop")
    assert stop.is_enabled()
    stop.click()
    wait(lambda: "stopped" in answers(browser)[-1].get_attribute("class"))
    stopped_text = answers(browser)[-1].text
    time.sleep(1)
    assert answers(browser)[-1].text == stopped_text  # nothing more arrives
    assert browser.find_element(By.ID, "send").is_enabled()
    # the server aborted the request: nothing is left running
    wait(lambda: server.metrics()["llama3_requests_running"] == 0, timeout=30)


def test_page_with_an_api_key(browser, new_server):
    from selenium.webdriver.common.by import By

    s = new_server(api_keys=["sk-page"]).start()
    browser.get(s.url + "/")
    wait(lambda: "API key" in browser.find_element(By.ID, "stats").text)  # 401 shown
    key = browser.find_element(By.ID, "api-key")
    key.send_keys("sk-page")
    browser.find_element(By.ID, "temperature").click()  # leaving the field saves the key
    wait(lambda: browser.find_element(By.ID, "model").text)
    temp = browser.find_element(By.ID, "temperature")
    temp.clear()
    temp.send_keys("0")  # greedy: a short, fixed answer (sampling could run to the context limit)
    browser.find_element(By.ID, "prompt").send_keys("Say hello.")
    browser.find_element(By.ID, "send").click()
    wait(lambda: "tokens/s" in browser.find_element(By.ID, "stats").text)
    assert answers(browser)[-1].text
