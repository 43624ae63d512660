"""The page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium; no browser is downloaded) chooses a run, generates, watches the progress bar move, gets
the images, downloads one and finds its parameters in it, then draws an inpainting mask."""

import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("the browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver",
                allow_module_level=True)

import uvicorn  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from pixel_diffusion.viz import PNG_KEY  # noqa: E402
from pixel_diffusion.web.server import create_app  # noqa: E402
from test_web import make_runs, png_of  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def server(runs):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = uvicorn.Server(uvicorn.Config(create_app(runs), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not served.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    served.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


SHOTS = os.environ.get("PIXEL_DIFFUSION_SCREENSHOTS")  # a folder: each view is saved there (docs/web.md's pictures)


def shot(browser, name: str) -> None:
    if SHOTS:
        browser.save_screenshot(str(Path(SHOTS) / f"web_{name}.png"))


def test_generate_watch_download_and_inpaint_in_a_browser(server, browser, tmp_path):
    browser.get(server)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "run")).options) == 2)
    Select(browser.find_element(By.ID, "run")).select_by_value("digits")
    wait.until(lambda d: "4" in d.find_element(By.ID, "summary").text)  # steps trained, from the run's summary
    Select(browser.find_element(By.ID, "sampler")).select_by_value("ddpm")
    for field, value in (("steps", "1000"), ("n", "64"), ("seed", "5")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "go").click()

    seen = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        value, top = (float(browser.find_element(By.ID, "progress").get_attribute(a)) for a in ("value", "max"))
        seen.add((value, top))
        if browser.find_elements(By.CSS_SELECTOR, "#results img"):
            break
        time.sleep(0.01)
    moving = {value for value, top in seen if top == 1000 and 0 < value < 1000}
    assert len(moving) >= 2, seen  # the bar was seen part-way, more than once
    links = browser.find_elements(By.CSS_SELECTOR, "#results a")
    assert len(links) == 64 and browser.find_element(By.ID, "live").get_attribute("src").startswith("data:image/png")
    with urllib.request.urlopen(links[3].get_attribute("href")) as response:  # what the download link saves
        made = json.loads(Image.open(io.BytesIO(response.read())).text[PNG_KEY])
    assert (made["sampler"], made["steps"], made["seed"], made["index"]) == ("ddpm", 1000, 5, 3)
    assert links[3].get_attribute("download").endswith("00003.png")
    shot(browser, "generate")

    picture = tmp_path / "digit.png"
    picture.write_bytes(png_of(size=64))
    browser.find_element(By.ID, "upload").send_keys(str(picture))
    canvas = browser.find_element(By.ID, "mask")
    time.sleep(0.5)  # the image is drawn on the canvas once loaded
    ActionChains(browser).move_to_element_with_offset(canvas, 40, 0).click_and_hold().move_by_offset(40, 40) \
        .move_by_offset(-20, 60).release().perform()
    browser.find_element(By.ID, "inpaint-go").click()
    wait.until(lambda d: "inpaint" in d.find_element(By.ID, "status").text and "done" in d.find_element(By.ID, "status").text)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results img")) == 4
    assert browser.find_element(By.ID, "error").text == ""
    shot(browser, "inpaint")
    browser.find_element(By.ID, "restore-go").click()
    wait.until(lambda d: "restore" in d.find_element(By.ID, "status").text and "done" in d.find_element(By.ID, "status").text)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results img")) == 4
    shot(browser, "restore")


def test_the_panels_hold_their_pictures_and_the_idle_progress_panel_shows_no_broken_image(runs, server, browser):
    # The newest preview as wide as a 64x64 run's grid of 16: wider than its panel.
    newest = sorted((runs / "plain" / "samples").glob("step-*.png"))[-1]
    Image.new("RGB", (1100, 1100), (40, 120, 200)).save(newest)
    browser.get(server)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "run")).options) == 2)
    Select(browser.find_element(By.ID, "run")).select_by_value("plain")
    wait.until(lambda d: d.execute_script("const p = document.getElementById('preview'); "
                                          "return !p.hidden && p.complete && p.naturalWidth === 1100"))
    panel, preview = (browser.find_element(By.ID, name).rect for name in ("about", "preview"))
    assert preview["width"] > 100  # shown, scaled to fit
    assert preview["x"] >= panel["x"] and preview["x"] + preview["width"] <= panel["x"] + panel["width"] + 0.5, (preview, panel)
    assert preview["y"] + preview["height"] <= panel["y"] + panel["height"] + 0.5, (preview, panel)
    shot(browser, "preview")
    # Idle: no job yet, so no image estimate; nothing of the empty image (not its alt text) is drawn.
    assert browser.find_element(By.ID, "status").text == "idle"
    live = browser.find_element(By.ID, "live")
    assert not live.is_displayed() and live.rect["height"] == 0
    assert "image estimate" not in browser.find_element(By.ID, "progress-panel").text
