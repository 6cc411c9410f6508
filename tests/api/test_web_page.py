"""The web page in a real browser: Debian's Chromium, headless, driven by Selenium through chromium-driver.

One real server (``run_server.py`` with the real engines, as a user starts it) serves the page; the browser
uploads a generated clip with a real face (scikit-image's astronaut), the test watches the progress move,
sees the comparison and the report bars, and downloads the protected MP4. A text file renamed .mp4 shows the
415 message in words; on a server with API keys (in-process, engines off) a wrong key shows the 401 message.
Each state is saved as a PNG under the test's temporary folder, at 1280 px and 390 px wide.

Chromium and its driver come from Debian (``.ci/run`` installs them when missing). Without them the module is
skipped on a developer's machine, and fails under CI (``CI=true``), where they must be present.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from support.media_factory import TOOL_FFMPEG, make_face_video

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"

if not CHROMIUM or not Path(DRIVER).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium and chromium-driver for the web page tests (.ci/run "
                           "installs them)")
    pytest.skip("Chromium or chromium-driver is not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from support.live_server import Server, free_port  # noqa: E402
from media_cleaner.media.probe import probe_media  # noqa: E402

PROTECT_TIMEOUT = 600
SERVER_START_TIMEOUT = 180   # torch and the models load at start-up; a cold, busy CPU box is slow
WIDE, PHONE = (1280, 900), (390, 844)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """run_server.py with one worker and the real engines, as a user starts it; yields its base URL."""
    srv = Server(tmp_path_factory.mktemp("page_server") / "data").start(timeout=SERVER_START_TIMEOUT)
    yield srv.url
    srv.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser_downloads")


@pytest.fixture
def browser(downloads):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WIDE[0]},{WIDE[1]}", "--lang=en-US"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False,
                                              "intl.accept_languages": "en-US,en"})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver, folder: Path, name: str) -> list[Path]:
    """Screenshots of the whole page at the wide and the phone width; back to wide afterwards."""
    paths = []
    for label, (width, height) in (("1280", WIDE), ("390", PHONE)):
        driver.set_window_size(width, height)
        full = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(max(height, full + 120), 4000))
        path = folder / f"{name}_{label}.png"
        driver.save_screenshot(str(path))
        paths.append(path)
    driver.set_window_size(*WIDE)
    return paths


def readme_picture(screenshot: Path, target: Path) -> None:
    """The first screen of the page, cropped to its column and made small (64 colours) for the README."""
    from PIL import Image
    image = Image.open(screenshot).convert("RGB")
    image = image.crop((150, 0, 1130, min(image.height, 820)))
    image = image.resize((image.width * 3 // 5, image.height * 3 // 5), Image.LANCZOS)
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def no_page_errors(driver) -> None:
    """The browser console has no script error and no CSP violation."""
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
              and "favicon" not in entry["message"]]
    # An API answer with an error status is logged by Chromium as a failed resource: expected in error tests.
    severe = [entry for entry in severe if "the server responded with a status of" not in entry["message"]]
    assert not severe, severe


def visible_text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text.strip()


def test_the_page_is_served_with_a_strict_policy(server):
    url = server
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
    assert "<script>" not in page.text and "style=" not in page.text   # no inline script or style
    assert httpx.get(f"{url}/app/app.js").headers["content-security-policy"] == policy
    assert httpx.get(f"{url}/docs").status_code == 200   # Swagger stays where it was


def test_a_person_protects_a_video_from_the_page(server, browser, downloads, tmp_path):
    url = server
    clip = make_face_video(tmp_path / "me talking.mp4", seconds=2.0, fps=10, size=256)
    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "MP4" in visible_text(d, "limits"))   # the limits come from /stats
    wide, _ = shoot(browser, tmp_path, "1_choose")
    if os.environ.get("MEDIA_CLEANER_README_SCREENSHOT"):   # how docs/page.png, the README's picture, is made
        readme_picture(wide, Path(os.environ["MEDIA_CLEANER_README_SCREENSHOT"]))

    browser.find_element(By.ID, "file").send_keys(str(clip))
    assert "me talking.mp4" in visible_text(browser, "chosen")
    browser.find_element(By.ID, "start").click()

    # Progress moves: the upload, the queue or the processing percentage, then done.
    seen = set()
    deadline = time.monotonic() + PROTECT_TIMEOUT
    while time.monotonic() < deadline and not browser.find_element(By.ID, "result").is_displayed():
        phase = visible_text(browser, "phase")
        if phase.startswith("Protecting") and not any(s.startswith("Protecting") for s in seen):
            shoot(browser, tmp_path, "2_progress")
        if phase:
            seen.add(phase)
        time.sleep(0.2)
    assert browser.find_element(By.ID, "result").is_displayed(), f"no result; saw {sorted(seen)}"
    # The page followed the task: at least two different progress words or percentages on the way.
    assert len([p for p in seen if p.startswith(("Protecting", "Waiting", "Uploading"))]) >= 2, seen

    # The comparison: both frames drawn from the original in the page and the protected download.
    WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.ID, "compare")))
    sizes = browser.execute_script(
        "return ['frame-original','frame-protected'].map(i => [document.getElementById(i).width, "
        "document.getElementById(i).height])")
    assert sizes == [[256, 256], [256, 256]], sizes
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#report meter")) >= 2)
    report = visible_text(browser, "report")
    assert "Face detector (MTCNN) still finds the face" in report and "Picture quality" in report, report
    assert "Face recognizer (FaceNet)" in report, report
    shoot(browser, tmp_path, "3_result")
    browser.find_element(By.ID, "show-change").click()
    shoot(browser, tmp_path, "4_change")

    # Download, with the name the API gives.
    browser.find_element(By.ID, "download").click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(downloads.glob("*_protected.mp4")):
        time.sleep(0.3)
    saved = list(downloads.glob("*_protected.mp4"))
    assert len(saved) == 1, list(downloads.iterdir())
    assert "me talking" in saved[0].name or "me_talking" in saved[0].name, saved[0].name
    info = probe_media(saved[0], TOOL_FFMPEG)
    assert info.frame_count == 20 and (info.width, info.height) == (256, 256)

    # My videos lists it, completed.
    assert "me talking.mp4" in visible_text(browser, "mine-list")
    no_page_errors(browser)


def test_a_file_that_is_not_a_video_is_explained(server, browser, tmp_path):
    url = server
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are my notes, not a video\n" * 50)
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda d: "MP4" in visible_text(d, "limits"))
    browser.find_element(By.ID, "file").send_keys(str(fake))
    browser.find_element(By.ID, "start").click()
    WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.ID, "error")))
    message = visible_text(browser, "error-text")
    assert message.startswith("This file is not a video the server can read"), message
    assert "{" not in message and "detail" not in message   # words, never raw JSON
    assert browser.find_element(By.ID, "choose").is_displayed()   # back where the person can choose again
    shoot(browser, tmp_path, "5_not_a_video")


def test_the_page_speaks_russian_to_a_russian_browser(server, browser, tmp_path):
    url = server
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda d: "MP4" in visible_text(d, "limits"))
    browser.find_element(By.ID, "language").click()
    WebDriverWait(browser, 10).until(lambda d: visible_text(d, "start") == "Защитить это видео")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "ru"
    shoot(browser, tmp_path, "6_russian")
    browser.find_element(By.ID, "language").click()   # and back, for the other tests' browser profile
    WebDriverWait(browser, 10).until(lambda d: visible_text(d, "start") == "Protect this video")


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """A server with API keys, in this process (engines off: only the key check is under test)."""
    import uvicorn

    from conftest import make_service
    from media_cleaner.api.app import create_app
    from media_cleaner.service.auth import add_key

    data_dir = tmp_path_factory.mktemp("keyed_server")
    keys = data_dir / "keys.txt"
    key = add_key(keys, "alice")
    service = make_service(data_dir, api_keys_file=keys)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service=service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", key
    server.should_exit = True
    thread.join(timeout=30)


def test_with_keys_the_page_asks_once_and_explains_a_wrong_key(keyed_server, browser, tmp_path):
    url, key = keyed_server
    browser.get(url + "/")
    dialog = WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "key-dialog")))
    browser.find_element(By.ID, "key-input").send_keys("mc_this-is-not-the-key")
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    WebDriverWait(browser, 20).until(EC.visibility_of_element_located((By.ID, "key-error")))
    assert visible_text(browser, "key-error").startswith("The API key is missing or not valid")
    shoot(browser, tmp_path, "7_wrong_key")
    field = browser.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda d: not dialog.is_displayed())
    WebDriverWait(browser, 20).until(lambda d: "MP4" in visible_text(d, "limits"))   # /stats with the key
    assert browser.execute_script("return sessionStorage.getItem('media-cleaner-key')") == key
    assert browser.execute_script("return localStorage.getItem('media-cleaner-key')") is None
