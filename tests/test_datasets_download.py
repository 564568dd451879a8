"""scripts/download_data.py without the network: a loopback HTTP server on 127.0.0.1 and local archives."""
import hashlib
import importlib.util
import io
import json
import os
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "download_data.py"


@pytest.fixture(scope="module")
def dl():
    spec = importlib.util.spec_from_file_location("download_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["download_data"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules["download_data"]


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    """Any connection attempt to a host other than 127.0.0.1 fails the test."""
    import socket

    real_connect = socket.socket.connect

    def guarded(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"network access to {address} during tests")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


class Server:
    """Serves ``files`` {path: bytes}; ``ranges`` toggles Range support; ``cut_after`` truncates responses."""

    def __init__(self):
        self.files = {}
        self.ranges = True
        self.cut_after = None
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                if header and server.ranges:
                    start = int(header.split("=")[1].rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body = body[:server.cut_after]
                self.wfile.write(body)
                if server.cut_after is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def md5(data):
    return hashlib.md5(data).hexdigest()


# -------------------------------------------------------------------------------------------------- downloading


def test_download_resumes_from_part_file(dl, server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    target = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD[:300_000])
    dl.download_url(server.url("/big.bin"), str(target), md5=md5(PAYLOAD), quiet=True)
    assert target.read_bytes() == PAYLOAD
    assert server.requests == [("/big.bin", "bytes=300000-")]
    assert not (tmp_path / "big.bin.part").exists()


def test_interrupted_download_then_resume(dl, server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    target = tmp_path / "big.bin"
    server.cut_after = 400_000
    with pytest.raises(dl.FetchError, match="run again to resume"):
        dl.download_url(server.url("/big.bin"), str(target), quiet=True)
    assert not target.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == 400_000
    server.cut_after = None
    dl.download_url(server.url("/big.bin"), str(target), md5=md5(PAYLOAD), quiet=True)
    assert target.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/big.bin", "bytes=400000-")


def test_server_without_range_support_restarts(dl, server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.ranges = False
    (tmp_path / "big.bin.part").write_bytes(b"stale bytes from another file")
    dl.download_url(server.url("/big.bin"), str(tmp_path / "big.bin"), md5=md5(PAYLOAD), quiet=True)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_without_body(dl, server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD)
    dl.download_url(server.url("/big.bin"), str(tmp_path / "big.bin"), md5=md5(PAYLOAD), quiet=True)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_md5_mismatch_deletes_the_download(dl, server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    with pytest.raises(dl.FetchError, match="MD5"):
        dl.download_url(server.url("/big.bin"), str(tmp_path / "big.bin"), md5="0" * 32, quiet=True)
    assert os.listdir(tmp_path) == []


def test_http_error_is_one_line(dl, server, tmp_path):
    with pytest.raises(dl.FetchError) as info:
        dl.download_url(server.url("/missing.tar"), str(tmp_path / "x.tar"), quiet=True)
    assert "404" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------- checking, unpacking


def make_tar(path, files):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def make_zip(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_unpack_takes_subfolder_and_merges(dl, tmp_path):
    archive = tmp_path / "fgvc.tar.gz"
    make_tar(archive, {"fgvc-aircraft-2013b/data/images/1.jpg": b"a", "fgvc-aircraft-2013b/data/variants.txt": b"v",
                       "fgvc-aircraft-2013b/README": b"r"})
    dest = tmp_path / "root" / "fgvc_aircraft"
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_text("user file")
    dl.unpack(str(archive), str(dest), take="fgvc-aircraft-2013b/data")
    assert sorted(os.listdir(dest)) == ["images", "keep.txt", "variants.txt"]
    assert (dest / "images" / "1.jpg").read_bytes() == b"a"


def test_unpack_zip(dl, tmp_path):
    archive = tmp_path / "EuroSAT.zip"
    make_zip(archive, {"2750/Forest/Forest_1.jpg": b"f", "2750/River/River_1.jpg": b"r"})
    dl.unpack(str(archive), str(tmp_path / "eurosat"))
    assert sorted(os.listdir(tmp_path / "eurosat" / "2750")) == ["Forest", "River"]


@pytest.mark.parametrize("maker, suffix", [(make_tar, ".tar.gz"), (make_zip, ".zip")])
def test_unpack_refuses_members_outside(dl, tmp_path, maker, suffix):
    archive = tmp_path / f"evil{suffix}"
    maker(archive, {"../escaped.txt": b"x"})
    dest = tmp_path / "a" / "b"
    with pytest.raises(dl.FetchError, match="unsafe"):
        dl.unpack(str(archive), str(dest))
    assert not (tmp_path / "a" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert os.listdir(dest) == []  # the staging folder is gone too


def test_check_file(dl, tmp_path):
    html = b"<html>Google Drive - quota exceeded</html>"
    for name in ("split_zhou_X.json", "a.zip", "a.tar.gz"):
        (tmp_path / name).write_bytes(html)
        with pytest.raises(dl.FetchError, match="delete it and run again"):
            dl.check_file(str(tmp_path / name))
    (tmp_path / "split_zhou_Y.json").write_text(json.dumps({"train": []}))
    with pytest.raises(dl.FetchError, match='"train", "val" and "test"'):
        dl.check_file(str(tmp_path / "split_zhou_Y.json"))
    (tmp_path / "split_zhou_Z.json").write_text(json.dumps({"train": [], "val": [], "test": []}))
    dl.check_file(str(tmp_path / "split_zhou_Z.json"))
    (tmp_path / "x.bin").write_bytes(b"abc")
    dl.check_file(str(tmp_path / "x.bin"), md5=md5(b"abc"))
    with pytest.raises(dl.FetchError, match="MD5"):
        dl.check_file(str(tmp_path / "x.bin"), md5=md5(b"abd"))


# ------------------------------------------------------------------------------------------------ whole plans


def test_run_plan_end_to_end_and_rerun(dl, server, tmp_path):
    archive = tmp_path / "pets.tar.gz"
    make_tar(archive, {"images/Abyssinian_1.jpg": b"img"})
    server.files["/pets.tar.gz"] = archive.read_bytes()
    split = json.dumps({"train": [], "val": [], "test": []}).encode()
    server.files["/split.json"] = split
    plan = dl.DatasetPlan(
        "toy", "Toy",
        (dl.Fetch("pets.tar.gz", urls=(server.url("/gone.tar.gz"), server.url("/pets.tar.gz")),
                  md5=md5(archive.read_bytes()), unpack_to="oxford_pets"),
         dl.Fetch("split_zhou_Toy.json", urls=(server.url("/split.json"),), dest="oxford_pets/split_zhou_Toy.json"),
         dl.Fetch("classnames.txt", urls=(server.url("/never.txt"),), copy_from="imagenet/classnames.txt",
                  dest="oxford_pets/classnames.txt")),
        ready=("oxford_pets/images", "oxford_pets/split_zhou_Toy.json", "oxford_pets/classnames.txt"),
    )
    root = tmp_path / "root"
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet" / "classnames.txt").write_text("n01440764 tench\n")
    assert dl.run_plan(plan, str(root), keep_archives=False, quiet=True) == "complete"
    assert (root / "oxford_pets" / "images" / "Abyssinian_1.jpg").read_bytes() == b"img"
    assert (root / "oxford_pets" / "split_zhou_Toy.json").read_bytes() == split
    assert (root / "oxford_pets" / "classnames.txt").read_text() == "n01440764 tench\n"
    assert not (root / "downloads" / "pets.tar.gz").exists()  # archive removed after unpacking
    assert [path for path, _ in server.requests] == ["/gone.tar.gz", "/pets.tar.gz", "/split.json"]

    # A partly deleted dataset is repaired without downloading the unpacked archive again.
    os.remove(root / "oxford_pets" / "split_zhou_Toy.json")
    assert dl.run_plan(plan, str(root), keep_archives=False, quiet=True) == "complete"
    assert [path for path, _ in server.requests][3:] == ["/split.json"]


def test_failed_fetch_reports_manual_steps(dl, server, tmp_path, capsys, monkeypatch):
    plan = dl.DatasetPlan("toy", "Toy", (dl.Fetch("a.tar", urls=(server.url("/a.tar"),), unpack_to="toy"),),
                          ready=("toy/images",), manual=("Put the images in <root>/toy/images.",))
    monkeypatch.setattr(dl, "PLANS", (plan,))
    assert dl.main(["--dataset", "toy", "--root", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "toy: FAILED:" in err and "404" in err
    assert f"by hand: Put the images in {tmp_path}/toy/images." in err
    assert "DATASETS.md#toy" in err


def test_dry_run_touches_nothing(dl, tmp_path, capsys):
    root = tmp_path / "root"
    assert dl.main(["--dataset", "all", "--root", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not root.exists()
    for plan in dl.PLANS:
        assert f"{plan.key}: would" in out
    assert "imagenet: by hand: Register at https://image-net.org" in out
    assert ("would unpack fgvc-aircraft-2013b.tar.gz (its folder fgvc-aircraft-2013b/data/) "
            f"into {root}/fgvc_aircraft") in out


def test_dry_run_shows_resume_and_completion(dl, tmp_path, capsys):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "dtd-r1.0.1.tar.gz.part").write_bytes(b"x" * 1234)
    dl.main(["--dataset", "DescribableTextures", "--root", str(tmp_path), "--dry-run"])
    assert "(resuming after 1234 bytes)" in capsys.readouterr().out
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text("{}")
    dl.main(["--dataset", "dtd", "--root", str(tmp_path), "--dry-run"])
    assert "dtd: complete" in capsys.readouterr().out


def test_manual_dataset_prints_instructions(dl, tmp_path, capsys):
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01440764 tench\n")
    assert dl.main(["--dataset", "imagenet_sketch", "--root", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "imagenet-sketch" / "classnames.txt").read_text() == "n01440764 tench\n"
    assert f"{tmp_path}/imagenet-sketch/images/<wnid>/ exists" in out
    assert "Manual steps needed for: imagenet_sketch (DATASETS.md#imagenetsketch)" in out


def test_unknown_dataset_is_a_usage_error(dl, capsys):
    with pytest.raises(SystemExit) as info:
        dl.main(["--dataset", "imagenet-z", "--root", "/nonexistent"])
    assert info.value.code == 2
    assert "unknown dataset 'imagenet-z'" in capsys.readouterr().err


def test_every_dataset_has_a_plan_matching_the_loaders(dl):
    keys = {plan.key for plan in dl.PLANS}
    config_ids = {p.stem for p in (SCRIPT.parents[1] / "configs" / "datasets").glob("*.yaml")} - {"toy_shapes"}
    assert keys == config_ids


def test_download_data_refuses_a_root_that_is_a_file(dl, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    for root in (tmp_path / "a_file", tmp_path / "a_file" / "data"):
        assert dl.main(["--dataset", "dtd", "--root", str(root)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: --root {root}: {tmp_path / 'a_file'} is a file, not a folder; pass a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_download_data_refuses_an_unwritable_root(dl, tmp_path, capsys, monkeypatch):
    root = tmp_path / "shared" / "data"
    if os.geteuid() == 0:  # root may write anywhere: make the write test fail as a read-only folder would
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(dl.tempfile, "TemporaryFile", refuse)
    else:
        (tmp_path / "shared").mkdir(mode=0o555)
    assert dl.main(["--dataset", "dtd", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write to --root {root} (Permission denied); pass a folder you can write to\n"
    assert not root.exists()  # the write test leaves nothing behind
