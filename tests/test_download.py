"""download / extract against a local HTTP server on 127.0.0.1."""

import hashlib
import io
import logging
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from egath.datasets.download import (SOURCES, DatasetError, DownloadError, download, extract,
                                     fetch_dataset)

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


def _zip_bytes(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    files = {"/data.bin": PAYLOAD, "/flaky.bin": PAYLOAD, "/short.bin": PAYLOAD,
             "/norange.bin": PAYLOAD, "/down.bin": PAYLOAD,
             "/pack.zip": _zip_bytes({"pack/a.txt": b"alpha", "pack/sub/b.txt": b"beta"})}
    log: list = []      # (path, Range header) per request
    failures: dict = {}  # path -> failures left to simulate

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if self.path == "/down.bin" or (self.path == "/flaky.bin" and self._fail()):
            self.send_error(503)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and self.path != "/norange.bin":
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path == "/short.bin" and self._fail():
            # Promise the whole body, send a third, drop the connection.
            self.wfile.write(body[start:start + len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def _fail(self):
        left = self.failures.get(self.path, 0)
        if left:
            self.failures[self.path] = left - 1
            return True
        return False


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _reset():
    _Handler.log.clear()
    _Handler.failures.clear()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_success_with_checksum(server, tmp_path):
    dest = download(f"{server}/data.bin", tmp_path / "d" / "data.bin", sha256=SHA,
                    progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "d" / "data.bin.partial").exists()
    # A second call finds the verified file and does not fetch again.
    download(f"{server}/data.bin", dest, sha256=SHA, progress=False)
    assert len(_Handler.log) == 1


def test_download_checksum_mismatch(server, tmp_path):
    bad = "0" * 64
    with pytest.raises(DownloadError) as e:
        download(f"{server}/data.bin", tmp_path / "data.bin", sha256=bad, progress=False)
    msg = str(e.value)
    assert "data.bin" in msg and bad in msg and SHA in msg
    assert not (tmp_path / "data.bin").exists()
    assert not (tmp_path / "data.bin.partial").exists()


def test_download_retries_after_server_error(server, tmp_path):
    _Handler.failures["/flaky.bin"] = 1
    dest = download(f"{server}/flaky.bin", tmp_path / "f.bin", sha256=SHA, backoff=0.01,
                    progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert len(_Handler.log) == 2


def test_download_resumes_after_dropped_connection(server, tmp_path):
    _Handler.failures["/short.bin"] = 1
    dest = download(f"{server}/short.bin", tmp_path / "s.bin", sha256=SHA, backoff=0.01,
                    progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.log[0] == ("/short.bin", None)
    assert _Handler.log[1] == ("/short.bin", f"bytes={len(PAYLOAD) // 3}-")


def test_download_resumes_existing_partial(server, tmp_path):
    (tmp_path / "r.bin.partial").write_bytes(PAYLOAD[:1000])
    dest = download(f"{server}/data.bin", tmp_path / "r.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.log == [("/data.bin", "bytes=1000-")]


def test_download_restarts_when_range_ignored(server, tmp_path):
    (tmp_path / "n.bin.partial").write_bytes(b"garbage" * 10)
    dest = download(f"{server}/norange.bin", tmp_path / "n.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_download_gives_up_and_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="giving up after 3 attempts"):
        download(f"{server}/down.bin", tmp_path / "x.bin", retries=2, backoff=0.01,
                 progress=False)
    assert len(_Handler.log) == 3
    _Handler.log.clear()
    with pytest.raises(DownloadError, match="404"):
        download(f"{server}/missing.bin", tmp_path / "y.bin", retries=3, backoff=0.01,
                 progress=False)
    assert len(_Handler.log) == 1


def test_extract_zip_and_tar(tmp_path):
    z = tmp_path / "a.zip"
    z.write_bytes(_zip_bytes({"top/x.txt": b"x"}))
    extract(z, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "x.txt").read_bytes() == b"x"
    t = tmp_path / "b.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        info = tarfile.TarInfo("dir/y.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"y"))
    extract(t, tmp_path / "out")
    assert (tmp_path / "out" / "dir" / "y.txt").read_bytes() == b"y"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_extract_refuses_path_traversal_zip(tmp_path, name):
    z = tmp_path / "bad.zip"
    z.write_bytes(_zip_bytes({"fine.txt": b"ok", name: b"bad"}))
    with pytest.raises(DatasetError, match="outside"):
        extract(z, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()  # refused before writing anything


def test_extract_refuses_tar_link_escape(tmp_path):
    t = tmp_path / "bad.tar"
    with tarfile.open(t, "w") as tf:
        link = tarfile.TarInfo("inside/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../etc/passwd"
        tf.addfile(link)
    with pytest.raises(DatasetError, match="outside"):
        extract(t, tmp_path / "out")


def test_extract_rejects_non_archive(tmp_path):
    p = tmp_path / "plain.txt"
    p.write_text("hello")
    with pytest.raises(DatasetError, match="not a zip or tar"):
        extract(p, tmp_path / "out")


def _toy_sources(url):
    return {"toy": {"homepage": url, "instructions": "put images in {raw_dir}",
                    "files": [{"name": "pack.zip", "url": f"{url}/pack.zip", "sha256": None,
                               "extract": True, "unpacked": {"b.txt": ("pack/sub/b.txt",)}},
                              {"name": "images/", "url": None, "sha256": None,
                               "extract": False}]}}


def test_fetch_dataset_downloads_and_unpacks_once(server, tmp_path):
    sources = _toy_sources(server)
    assert fetch_dataset("toy", tmp_path, sources=sources, progress=False) == \
        {"pack.zip": "downloaded"}
    assert (tmp_path / "pack" / "sub" / "b.txt").read_bytes() == b"beta"
    assert _Handler.log == [("/pack.zip", None)]
    (tmp_path / "pack.zip").unlink()  # unpacked files are enough: no second request
    assert fetch_dataset("toy", tmp_path, sources=sources, progress=False) == \
        {"pack.zip": "unpacked in place"}
    assert len(_Handler.log) == 1


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: any request to it fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_archive_in_place_is_unpacked_not_fetched(tmp_path, caplog):
    (tmp_path / "pack.zip").write_bytes(_zip_bytes({"pack/sub/b.txt": b"mine"}))
    caplog.set_level(logging.INFO)
    assert fetch_dataset("toy", tmp_path, sources=_toy_sources(closed_port_url()),
                         progress=False) == {"pack.zip": "archive in place"}
    assert (tmp_path / "pack" / "sub" / "b.txt").read_bytes() == b"mine"
    assert "pack.zip already present" in caplog.text


def test_offline_error_says_where_to_put_each_missing_file(tmp_path):
    url = closed_port_url()
    sources = {"nuswide": {**SOURCES["nuswide"], "files": [
        {**entry, "url": entry["url"] and f"{url}/{entry['name']}"}
        for entry in SOURCES["nuswide"]["files"]]}}
    (tmp_path / "ImageList").mkdir()  # ImageList.zip's contents are in place
    (tmp_path / "ImageList" / "Imagelist.txt").write_text("actor\\0001_2124494179.jpg\n")
    with pytest.raises(DownloadError) as e:
        fetch_dataset("nuswide", tmp_path, sources=sources, retries=0, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{url}/NUS_WID_Tags.zip: giving up after 1 attempts")
    assert msg.split("\n")[1:] == [
        "To use copies you have (or to work offline), for each file still missing:",
        f"- put NUS_WID_Tags.zip in {tmp_path}, or unpack it there so that "
        f"{tmp_path}/NUS_WID_Tags/TagList1k.txt (or TagList1k.txt), "
        f"{tmp_path}/NUS_WID_Tags/AllTags1k.txt (or AllTags1k.txt), "
        f"{tmp_path}/NUS_WID_Tags/All_Tags.txt (or All_Tags.txt) exist "
        f"(also accepted inside NUS-WIDE/, nuswide/, NUS_WIDE/, Low-Level-Features/)",
        f"- put Groundtruth.zip in {tmp_path}, or unpack it there so that "
        f"{tmp_path}/Groundtruth/AllLabels (or AllLabels) exist "
        f"(also accepted inside NUS-WIDE/, nuswide/, NUS_WIDE/, Low-Level-Features/)",
        f"- put ConceptsList.zip in {tmp_path}, or unpack it there so that "
        f"{tmp_path}/ConceptsList/Concepts81.txt (or Concepts81.txt, "
        f"Groundtruth/Concepts81.txt) exist "
        f"(also accepted inside NUS-WIDE/, nuswide/, NUS_WIDE/, Low-Level-Features/)",
        "Then run again."]


def test_sources_table_is_well_formed():
    assert {"mirflickr25k", "nuswide", "coco2014", "coco2017"} <= set(SOURCES)
    for name, entry in SOURCES.items():
        assert entry["homepage"].startswith("http")
        assert entry["instructions"]
        for f in entry["files"]:
            assert set(f) >= {"name", "url", "sha256", "extract"}
            assert f["url"] is None or f["url"].startswith("http")
            assert f["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
    assert any(f["url"] is None for f in SOURCES["nuswide"]["files"])  # images: mirrors only
