"""`egath serve` on the shared demo index (tests/search_demo.py): the JSON API, uploads, the
files it serves, its log, and the page driven in a real headless browser (Debian's chromium
and chromium-driver, which .ci/run installs)."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egath.search import load_index, search

REPO = Path(__file__).resolve().parents[1]
MAX_UPLOAD_MB = 0.05


class Server:
    """`egath serve` in a subprocess on a free port; its log lines are collected as they come."""

    def __init__(self, index, *options):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen([sys.executable, "-m", "egath.cli", "serve", str(index), "--port", "0",
                                         *options], stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.url = None
        started = threading.Event()

        def read():
            for line in self.process.stderr:
                self.lines.append(line.rstrip("\n"))
                found = re.search(r"serving .* at (http://\S+/)", line)
                if found:
                    self.url = found.group(1)
                    started.set()
            started.set()  # the process ended

        threading.Thread(target=read, daemon=True).start()
        started.wait(timeout=120)
        if self.url is None:
            self.stop()
            raise RuntimeError("egath serve did not start:\n" + "\n".join(self.lines))

    def get(self, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path.lstrip("/"), data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, path: str, data: bytes | None = None) -> tuple[int, dict]:
        status, body = self.get(path, data)
        return status, json.loads(body)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(search_demo):
    running = Server(search_demo["index"], "--k", "10", "--max-upload-mb", str(MAX_UPLOAD_MB))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def index(search_demo):
    return load_index(search_demo["index"])


def _expected(result) -> list[dict]:
    return [{**hit, "thumbnail": f"/thumbnails/{hit['row']}"} for hit in json.loads(json.dumps(result.to_dict()))["hits"]]


def test_it_listens_on_the_loopback_address_by_default(server):
    assert server.url.startswith("http://127.0.0.1:")


def test_a_text_query_answers_as_the_library_does(server, index):
    status, body = server.json("/api/search?text=blue+circle&k=7")
    assert status == 200 and body["searched"] == "image" and body["query_labels"] == ["circle"]
    assert body["hits"] == _expected(search(index, text="blue circle", k=7))
    status, body = server.json("/api/search?text=circle")
    assert len(body["hits"]) == 10  # the server's --k


def test_an_item_of_the_index_is_a_query(server, index):
    status, body = server.json("/api/search?item=5&modality=text&k=4&same_modality=1")
    assert status == 200 and body["searched"] == "text" and body["hits"][0]["distance"] == 0
    assert body["hits"] == _expected(search(index, item=("text", 5), k=4, same_modality=True))


def test_an_uploaded_image_finds_texts(server, index):
    path = index.image_paths[9]
    status, body = server.json("/api/search?k=5", Path(path).read_bytes())
    assert status == 200 and body["searched"] == "text"
    assert [h["row"] for h in body["hits"]] == [h.row for h in search(index, image=path, k=5).hits]


def test_an_upload_that_is_not_an_image_or_too_large_is_refused_with_a_message(server):
    status, body = server.json("/api/search", b"name,age\nada,36\n")
    assert status == 415 and "not an image" in body["error"]
    picture = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)).save(picture, "PNG")
    assert len(picture.getvalue()) > MAX_UPLOAD_MB * 1e6
    status, body = server.json("/api/search", picture.getvalue())
    assert status == 413 and "larger than 50,000 bytes" in body["error"]
    status, body = server.json("/api/search", b"")
    assert status == 400


def test_only_the_files_the_index_lists_are_served(server, index):
    status, png = server.get("/thumbnails/0")
    assert status == 200
    with Image.open(io.BytesIO(png)) as served, Image.open(index.image_paths[0]) as original:
        assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(original.convert("RGB")))
    outside = ["/thumbnails/%d" % len(index), "/thumbnails/-1", "/thumbnails/..%2F..%2F..%2Fetc%2Fpasswd",
               "/etc/passwd", "/thumbnails/0/../../../../etc/passwd", "/" + index.image_paths[0].lstrip("/"),
               "/thumbnails/" + index.image_paths[0]]
    for path in outside:
        status, body = server.get(path)
        assert status == 404, path
        assert b"root:" not in body and not body.startswith(b"\x89PNG")


def test_bad_queries_get_a_message(server):
    status, body = server.json("/api/search?text=zebra+xylophone")
    assert status == 400 and "none of the words" in body["error"]
    status, body = server.json("/api/search?k=3")
    assert status == 400 and "give text=" in body["error"]
    status, body = server.json("/api/search?text=circle&k=many")
    assert status == 400 and "k must be a whole number" in body["error"]


def test_each_query_is_logged_in_one_line_with_its_time(server):
    server.json("/api/search?text=red+square&k=3")
    deadline = time.time() + 10
    while time.time() < deadline and not any("red square" in line for line in server.lines):
        time.sleep(0.1)
    logged = [line for line in server.lines if "red square" in line]
    assert len(logged) == 1
    assert re.search(r"egath\.serve: query text 'red square': 3 images in \d+\.\d ms$", logged[0]), logged


# --------------------------------------------------------------------------- the page in a browser

@pytest.fixture(scope="module")
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str, seconds: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: condition(d), message=f"waiting for {what}")


def _loaded_thumbnails(driver) -> list:
    images = driver.find_elements("css selector", "#results .hit img.thumb")
    return images if images and all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", im)
                                    for im in images) else []


def test_the_page_finds_images_by_a_shape_name_and_texts_by_an_uploaded_image(server, browser, index):
    browser.get(server.url)
    _wait(browser, lambda d: "images and texts" in d.find_element("id", "about").text, "the index's description")
    box = browser.find_element("id", "text")
    box.send_keys("circle")
    browser.find_element("css selector", "#query button[type=submit]").click()
    thumbnails = _wait(browser, _loaded_thumbnails, "result thumbnails")
    assert len(thumbnails) >= 5
    cards = browser.find_elements("css selector", "#results .hit")
    shares = [card.get_attribute("data-shares-label") for card in cards]
    assert shares.count("true") > len(cards) / 2, shares
    assert "query labels: circle" in browser.find_element("id", "status").text

    # an uploaded image: its nearest texts
    upload = index.image_paths[9]
    browser.find_element("id", "image").send_keys(upload)
    _wait(browser, lambda d: d.find_element("id", "results").get_attribute("class") == "texts", "text results")
    texts = [t.text for t in browser.find_elements("css selector", "#results .hit .text")]
    assert texts == [hit.text for hit in search(index, image=upload, k=10).hits]

    # clicking a text searches with it: images again
    browser.find_elements("css selector", "#results .hit")[0].click()
    _wait(browser, lambda d: d.find_element("id", "results").get_attribute("class") == "images", "image results")
    assert len(_wait(browser, _loaded_thumbnails, "thumbnails of the clicked text's results")) == 10
    assert "of item" in browser.find_element("id", "status").text
