"""Tests for ``python -m bbam.data.fetch``: downloads from a local HTTP server standing in
for GitHub (``$BBAM_DATA_URL``), checksums, nothing half-written on failure, the CLI's
one-line errors, the conversions (against the real data where it is present) and the
not-found message of a run without the data."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from bbam import data as ds
from bbam.data import fetch, lookup

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"

TRAIN_ARFF = """@relation toy
@attribute f1 numeric
@attribute f2 numeric
@attribute a {0,1}
@attribute b {0,1}
@data
1.5,2,1,0
0,-1,0,1
3,0.25,1,1
"""
TEST_ARFF = TRAIN_ARFF.replace("1.5,2,1,0\n0,-1,0,1\n3,0.25,1,1\n", "7,8,0,1\n")
XML = '<?xml version="1.0"?>\n<labels xmlns="http://mulan.sourceforge.net/labels"><label name="a"/><label name="b"/></labels>\n'


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A folder served over HTTP on 127.0.0.1 (a free port), laid out as
    ``<owner>/<repo>/<commit>/<path>``; ``BBAM_DATA_URL`` points at it and ``BBAM_DATA_DIR``
    at an empty ``tmp/data``."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("BBAM_DATA_URL", url)
    monkeypatch.setenv("BBAM_DATA_DIR", str(tmp_path / "data"))
    yield root, url
    server.shutdown()
    server.server_close()


def add_toy_set(root: Path, monkeypatch, name: str = "toyset", repo: str = "someone/toys") -> fetch.DatasetSource:
    """A tiny MULAN-like set (ARFF pair + xml) on the mirror, registered with its hashes."""
    folder = root / repo / COMMIT / "data" / "multi-label" / name
    folder.mkdir(parents=True)
    (folder / f"{name}-train.arff").write_text(TRAIN_ARFF)
    (folder / f"{name}-test.arff").write_text(TEST_ARFF)
    (folder / f"{name}.xml").write_text(XML)
    files = {f"data/multi-label/{name}/{f.name}": sha256(f) for f in sorted(folder.iterdir())}
    src = fetch.DatasetSource(repo, COMMIT, files, fetch._mulan_builder(name), (f"{name}/{name}.npz",))
    monkeypatch.setitem(fetch.SOURCES, name, src)
    return src


def leftovers(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*")) if data_dir.exists() else []


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """``python -m bbam.data.fetch argv`` in-process: its status and stderr lines, progress bars left out."""
    code = fetch.main(list(argv))
    err = capsys.readouterr().err.replace("\r", "\n")
    return code, [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln and not ln.endswith("/s]")]


# ----------------------------------------------------------------------------- downloads
def test_fetch_converts_and_load_dataset_finds_it(mirror, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    add_toy_set(root, monkeypatch)
    code, lines = run_cli(capsys, "toyset")
    assert code == 0, lines
    assert leftovers(tmp_path / "data") == ["toyset", "toyset/toyset.npz"]
    d = ds.load_dataset("toyset")
    assert torch.equal(d.X, torch.tensor([[1.5, 2], [0, -1], [3, 0.25], [7, 8]]))
    assert d.Y.tolist() == [[1, 0], [0, 1], [1, 1], [0, 1]]
    assert d.train_idx.tolist() == [0, 1, 2] and d.test_idx.tolist() == [3]
    assert (list(d.label_names), list(d.feature_names)) == (["a", "b"], ["f1", "f2"])
    z = np.load(tmp_path / "data" / "toyset" / "toyset.npz")
    assert (z["X"].dtype, z["Y"].dtype, z["train_idx"].dtype, z["label_names"].dtype.kind) == (np.float32, np.int8, np.int64, "U")


def test_checksum_mismatch_keeps_nothing(mirror, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    src = add_toy_set(root, monkeypatch)
    served = root / src.repo / COMMIT / "data/multi-label/toyset/toyset-test.arff"
    served.write_text(TEST_ARFF.replace("7,8", "7,9"))  # changed after its hash was pinned
    code, lines = run_cli(capsys, "toyset")
    assert code == 2
    expected = src.files["data/multi-label/toyset/toyset-test.arff"]
    assert lines[-1] == (f"bbam.data.fetch: checksum mismatch for data/multi-label/toyset/toyset-test.arff of 'toyset' "
                         f"({os.environ['BBAM_DATA_URL']}/someone/toys/{COMMIT}/data/multi-label/toyset/toyset-test.arff): "
                         f"expected sha256 {expected}, got {sha256(served)}; nothing was kept")
    assert leftovers(tmp_path / "data") == []  # no npz, no temporary folder or file


def test_failed_force_leaves_the_present_set_alone(mirror, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    src = add_toy_set(root, monkeypatch)
    assert run_cli(capsys, "toyset")[0] == 0
    before = (tmp_path / "data/toyset/toyset.npz").read_bytes()
    (root / src.repo / COMMIT / "data/multi-label/toyset/toyset.xml").write_text(XML + " ")
    code, lines = run_cli(capsys, "toyset", "--force")
    assert code == 2 and "checksum mismatch for data/multi-label/toyset/toyset.xml" in lines[-1]
    assert (tmp_path / "data/toyset/toyset.npz").read_bytes() == before
    assert leftovers(tmp_path / "data") == ["toyset", "toyset/toyset.npz"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_names_the_url_and_the_variable(mirror, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    add_toy_set(root, monkeypatch)
    base = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("BBAM_DATA_URL", base)
    code, lines = run_cli(capsys, "toyset")
    assert code == 2
    assert lines[-1].startswith(f"bbam.data.fetch: cannot download {base}/someone/toys/{COMMIT}/data/multi-label/toyset/")
    assert f"set BBAM_DATA_URL to a mirror laid out as <owner>/<repo>/<commit>/<path> (now {base})" in lines[-1]
    assert leftovers(tmp_path / "data") == []


def test_http_error_names_the_url(mirror, tmp_path, monkeypatch, capsys):
    root, url = mirror
    src = add_toy_set(root, monkeypatch)
    (root / src.repo / COMMIT / "data/multi-label/toyset/toyset.xml").unlink()
    code, lines = run_cli(capsys, "toyset")
    assert code == 2
    assert lines[-1].startswith(f"bbam.data.fetch: HTTP 404 File not found for {url}/someone/toys/{COMMIT}/data/multi-label/toyset/toyset.xml; ")
    assert "BBAM_DATA_URL" in lines[-1] and leftovers(tmp_path / "data") == []


def test_a_silent_server_times_out(mirror, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    add_toy_set(root, monkeypatch)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("BBAM_DATA_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(fetch, "TIMEOUT_S", 0.3)
        code, lines = run_cli(capsys, "toyset")
    assert code == 2 and lines[-1].startswith("bbam.data.fetch: no data for 0.3 s from http://127.0.0.1:")
    assert leftovers(tmp_path / "data") == []


def test_unknown_name_lists_the_choices_with_status_2(tmp_path):
    env = {**os.environ, "BBAM_DATA_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "bbam.data.fetch", "emotions", "nosuchset"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"bbam.data.fetch: unknown dataset 'nosuchset'; choose from: {', '.join(fetch.SOURCES)}"]
    assert leftovers(tmp_path) == []  # refused before downloading emotions


def test_all_skip_present_and_force(mirror, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    monkeypatch.setattr(fetch, "SOURCES", {})
    add_toy_set(root, monkeypatch, "toya")
    add_toy_set(root, monkeypatch, "toyb", repo="other/toys")
    code, lines = run_cli(capsys, "--all")
    assert code == 0 and leftovers(tmp_path / "data") == ["toya", "toya/toya.npz", "toyb", "toyb/toyb.npz"]
    npz = tmp_path / "data/toya/toya.npz"
    npz.write_bytes(b"stale")  # present: not downloaded again without --force
    code, lines = run_cli(capsys, "toya")
    assert code == 0 and lines == [f"toya: already in {npz} (--force gets it again)"]
    assert npz.read_bytes() == b"stale"
    code, lines = run_cli(capsys, "toya", "--force")
    assert code == 0 and lines[-1] == f"toya: stored in {npz.parent}"
    assert ds.load_dataset("toya").num_samples == 4


def test_list_and_data_dir(mirror, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    add_toy_set(root, monkeypatch)
    assert fetch.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "toyset" in out and "absent" in out and "emotions" in out
    other = tmp_path / "elsewhere"
    code, lines = run_cli(capsys, "toyset", "--data-dir", str(other))
    assert code == 0 and (other / "toyset" / "toyset.npz").is_file()
    assert lines[-1] == f"note: set BBAM_DATA_DIR={other} so that bbam finds these sets by name"
    assert fetch.main(["--list", "--data-dir", str(other)]) == 0
    assert any(ln.startswith("toyset") and "present" in ln for ln in capsys.readouterr().out.splitlines())


def test_a_set_without_public_source_says_how_to_build_it(mirror, monkeypatch, capsys):
    monkeypatch.setitem(fetch.SOURCES, "private", fetch.DatasetSource("", "", {}, None, ("private/private.npz",),
                                                                      howto="build private/private.npz with save_npz"))
    code, lines = run_cli(capsys, "private")
    assert code == 2 and lines == ["bbam.data.fetch: 'private' has no public download: build private/private.npz with save_npz"]


def test_download_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("BBAM_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / ".cache" / "bbam" / "data"
    assert fetch.download_dir() == cache and ds.default_data_dirs()[0] == cache
    monkeypatch.setenv("BBAM_DATA_DIR", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert fetch.download_dir() == tmp_path / "a"
    assert ds.default_data_dirs()[:2] == [tmp_path / "a", tmp_path / "b"] and cache not in ds.default_data_dirs()


# ----------------------------------------------------------------------------- conversions
SGML = """<!DOCTYPE lewis SYSTEM "lewis.dtd">
<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" CGISPLIT="TRAINING-SET" OLDID="5544" NEWID="1">
<DATE>26-FEB-1987 15:01:01.79</DATE>
<TOPICS><D>grain</D><D>wheat</D><D>grain</D></TOPICS>
<PLACES><D>usa</D></PLACES>
<UNKNOWN> &#5;&#5;&#5;C T
&#22;&#22;&#1;f0704&#31;reute</UNKNOWN>
<TEXT>&#2;
<TITLE>WHEAT &amp; GRAIN UP</TITLE>
<DATELINE>    CHICAGO, Feb 26 - </DATELINE><BODY>Wheat rose &lt;5 pct&gt; in
grain trade.
 Reuter
&#3;</BODY></TEXT>
</REUTERS>
<REUTERS TOPICS="YES" LEWISSPLIT="TEST" CGISPLIT="PUBLISHED-TESTSET" OLDID="1" NEWID="2">
<TOPICS><D>corn</D><D>grain</D></TOPICS>
<TEXT TYPE="UNPROC">&#2;
GRAIN STOCKS REPORT
  corn 1,000 vs 900
 Reuter
&#3;</TEXT>
</REUTERS>
<REUTERS TOPICS="NO" LEWISSPLIT="TRAIN" CGISPLIT="TRAINING-SET" OLDID="2" NEWID="3">
<TOPICS></TOPICS><TEXT><TITLE>NO TOPICS</TITLE><BODY>dropped</BODY></TEXT>
</REUTERS>
<REUTERS TOPICS="YES" LEWISSPLIT="NOT-USED" CGISPLIT="TRAINING-SET" OLDID="3" NEWID="4">
<TOPICS><D>wheat</D></TOPICS><TEXT><TITLE>UNUSED</TITLE><BODY>dropped</BODY></TEXT>
</REUTERS>
<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" CGISPLIT="TRAINING-SET" OLDID="4" NEWID="5">
<TOPICS><D>cocoa</D></TOPICS><TEXT><TITLE>COCOA ONLY IN TRAINING</TITLE><BODY>cocoa</BODY></TEXT>
</REUTERS>
<REUTERS TOPICS="YES" LEWISSPLIT="TEST" CGISPLIT="PUBLISHED-TESTSET" OLDID="5" NEWID="6">
<TOPICS><D>wheat</D></TOPICS>
<TEXT TYPE="BRIEF">&#2;
******<TITLE>WHEAT BRIEF
</TITLE>
&#3;</TEXT>
</REUTERS>
<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" CGISPLIT="TRAINING-SET" OLDID="6" NEWID="7">
<TOPICS><D>wheat</D></TOPICS>
<TEXT>&#2;
<TITLE>M\u00dcNCHEN WHEAT</TITLE>
<BODY>Wheat wheat in M\u00fcnchen, reuters said. Reuter
&#3;</BODY></TEXT>
</REUTERS>
"""


def test_reuters_sgml_to_jsonl_and_bag_of_words(mirror, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    path = root / "someone/reuters" / COMMIT / "sgm-data/reut2-000.sgm"
    path.parent.mkdir(parents=True)
    path.write_bytes(SGML.encode("latin-1"))  # as the real files: latin-1 bytes
    outputs = ("reuters21578/reuters21578.npz", "reuters21578/reuters21578_texts.jsonl")
    monkeypatch.setitem(fetch.SOURCES, "reuters21578", fetch.DatasetSource(
        "someone/reuters", COMMIT, {"sgm-data/reut2-000.sgm": sha256(path)}, fetch._build_reuters, outputs))
    assert run_cli(capsys, "reuters21578")[0] == 0
    folder = tmp_path / "data" / "reuters21578"
    lines = (folder / "reuters21578_texts.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(s) for s in lines] == [
        {"row": 0, "doc_id": 1, "split": "train", "labels": ["grain", "wheat"], "title": "WHEAT & GRAIN UP",
         "body": "Wheat rose <5 pct> in\ngrain trade."},
        {"row": 1, "doc_id": 7, "split": "train", "labels": ["wheat"], "title": "M\u00dcNCHEN WHEAT",
         "body": "Wheat wheat in M\u00fcnchen, reuters said."},
        {"row": 2, "doc_id": 2, "split": "test", "labels": ["grain"], "title": "",
         "body": "GRAIN STOCKS REPORT\n  corn 1,000 vs 900"},
        {"row": 3, "doc_id": 6, "split": "test", "labels": ["wheat"], "title": "WHEAT BRIEF", "body": ""},
    ]
    assert "M\u00fcnchen" in lines[1]  # UTF-8, not \\u escapes
    d = ds.load_dataset("reuters21578")
    z = np.load(folder / "reuters21578.npz")
    vocab = list(z["feature_names"])
    assert vocab[:2] == ["in", "wheat"]  # training document frequency 2 (ties by term), then the 1s
    assert sorted(vocab) == sorted({"wheat", "grain", "up", "rose", "pct", "in", "trade", "nchen", "reuters", "said"})
    assert d.X[0, vocab.index("wheat")] == 2 and d.X[1, vocab.index("wheat")] == 3 and d.X[2, vocab.index("grain")] == 1
    assert list(d.label_names) == ["grain", "wheat"] and d.Y.tolist() == [[1, 1], [0, 1], [1, 0], [0, 1]]
    assert d.train_idx.tolist() == [0, 1] and d.test_idx.tolist() == [2, 3] and z["doc_ids"].tolist() == [1, 7, 2, 6]
    assert fetch.is_present("reuters21578_text")  # one conversion gives both


def test_miml_folder_from_csv_and_images(mirror, tmp_path, monkeypatch, capsys):
    root, _ = mirror
    src = root / "someone/miml" / COMMIT / "miml_dataset"
    (src / "images").mkdir(parents=True)
    (src / "miml_labels_1.csv").write_bytes(
        b"Filenames,desert,mountains,sea,sunset,trees\r\n" + b"".join(
            f"{i}.jpg,{i % 2},{int(i == 2)},0,{int(i > 3)},1\r\n".encode() for i in range(1, 6)))
    paths = tuple(f"miml_dataset/images/{i}.jpg" for i in range(1, 6))
    for i, p in enumerate(paths):
        (root / "someone/miml" / COMMIT / p).write_bytes(b"\xff\xd8 jpeg %d" % i)
    manifest = "".join(f"{sha256(root / 'someone/miml' / COMMIT / p)}  {p}\n" for p in paths).encode()
    source = fetch.DatasetSource("someone/miml", COMMIT, {"miml_dataset/miml_labels_1.csv": sha256(src / "miml_labels_1.csv")},
                                 fetch._build_miml, ("miml/labels.tsv", "miml/split.tsv", "miml/images"),
                                 manifest=(paths, hashlib.sha256(manifest).hexdigest()))
    monkeypatch.setitem(fetch.SOURCES, "miml", source)
    assert run_cli(capsys, "miml")[0] == 0
    folder = tmp_path / "data" / "miml"
    assert (folder / "labels.tsv").read_text().splitlines() == [
        "images/1.jpg\tdesert,trees", "images/2.jpg\tmountains,trees", "images/3.jpg\tdesert,trees",
        "images/4.jpg\tsunset,trees", "images/5.jpg\tdesert,sunset,trees"]
    test_row = int(np.random.default_rng(0).permutation(5)[0])
    assert (folder / "split.tsv").read_text().splitlines() == [
        f"images/{k + 1}.jpg\t{'test' if k == test_row else 'train'}" for k in range(5)]
    assert sorted(p.name for p in (folder / "images").iterdir()) == [f"{i}.jpg" for i in range(1, 6)]
    # one image changed: the list of image hashes no longer matches, nothing is kept
    (root / "someone/miml" / COMMIT / paths[3]).write_bytes(b"\xff\xd8 other")
    code, lines = run_cli(capsys, "miml", "--force")
    assert code == 2 and "checksum mismatch for the 5 files miml_dataset/images/1.jpg ... miml_dataset/images/5.jpg" in lines[-1]
    assert lines[-1].endswith("; nothing was kept") and (folder / "images" / "4.jpg").read_bytes() == b"\xff\xd8 jpeg 3"
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- against the real data
MULAN_WITH_ARFF = ("emotions", "enron", "medical")


@pytest.mark.parametrize("name", MULAN_WITH_ARFF)
def test_mulan_conversion_equals_the_stored_npz(name, shared_data_dir, mirror, tmp_path, capsys):
    folder = shared_data_dir / name
    if not (folder / f"{name}-train.arff").is_file():
        pytest.skip(f"{folder} holds no original ARFF files")
    root, _ = mirror
    src = fetch.SOURCES[name]
    for path, pinned in src.files.items():  # the pinned hashes are those of the real files
        local = folder / path.rsplit("/", 1)[-1]
        assert sha256(local) == pinned, local
        served = root / src.repo / src.commit / path
        served.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, served)
    assert run_cli(capsys, name)[0] == 0
    got, want = np.load(tmp_path / "data" / name / f"{name}.npz"), np.load(folder / f"{name}.npz")
    assert got.files == want.files
    _assert_same_arrays(got, want)


def _assert_same_arrays(got, want) -> None:
    for key in want.files:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key


def test_reuters_bag_of_words_from_the_stored_texts_equals_the_stored_npz(shared_data_dir):
    folder = shared_data_dir / "reuters21578"
    if not (folder / "reuters21578_texts.jsonl").is_file():
        pytest.skip(f"{folder} holds no reuters21578_texts.jsonl")
    with open(folder / "reuters21578_texts.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    got, want = fetch.reuters_arrays(records), np.load(folder / "reuters21578.npz")
    assert sorted(got) == sorted(want.files)
    _assert_same_arrays(got, want)


def test_miml_images_and_split_equal_the_stored_folder(shared_data_dir):
    folder = shared_data_dir / "miml"
    if not (folder / "labels.tsv").is_file():
        pytest.skip(f"{folder} holds no labels.tsv")
    paths, pinned = fetch.SOURCES["miml"].manifest
    lines = "".join(f"{sha256(folder / 'images' / p.rsplit('/', 1)[-1])}  {p}\n" for p in paths)
    assert hashlib.sha256(lines.encode()).hexdigest() == pinned
    rows = [ln.split("\t")[0] for ln in (folder / "labels.tsv").read_text().splitlines()]
    assert rows == [f"images/{i}.jpg" for i in range(1, 2001)]  # the csv's order
    test = set(np.random.default_rng(0).permutation(2000)[:400].tolist())
    assert (folder / "split.tsv").read_text().splitlines() == [
        f"{r}\t{'test' if k in test else 'train'}" for k, r in enumerate(rows)]


# ----------------------------------------------------------------------------- the app, end to end
@pytest.mark.slow
def test_fetch_then_train_emotions(shared_data_dir, tmp_path):
    folder = shared_data_dir / "emotions"
    if not all((folder / f).is_file() for f in ("emotions-train.arff", "emotions-test.arff", "emotions.xml")):
        pytest.skip(f"{folder} holds no original emotions ARFF files")
    src = fetch.SOURCES["emotions"]
    root = tmp_path / "mirror"
    for path in src.files:
        (root / src.repo / src.commit / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / path.rsplit("/", 1)[-1], root / src.repo / src.commit / path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    data, run = tmp_path / "data", tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "BBAM_DATA_URL": f"http://127.0.0.1:{server.server_address[1]}", "BBAM_DATA_DIR": str(data)}
    try:
        r = subprocess.run([sys.executable, "-m", "bbam.data.fetch", "emotions"], capture_output=True, text=True,
                           env=env, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 0, r.stderr
    assert (data / "emotions" / "emotions.npz").is_file()
    env.pop("BBAM_DATA_URL")
    r = subprocess.run([sys.executable, "-m", "bbam.train", "data=emotions", "train.epochs=2", "train.warmup_epochs=1",
                        "train.progress=false"], cwd=run, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"(data: {data / 'emotions' / 'emotions.npz'})" in r.stdout + r.stderr  # the fetched copy, not another


def test_not_found_message_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setattr(lookup, "_CHECKOUT_DATA_DIR", tmp_path / "no-checkout-data")
    monkeypatch.setenv("BBAM_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        ds.load_dataset("emotions")
    assert e.value.strerror == (
        f"dataset 'emotions' not found in {tmp_path / 'empty'}, {tmp_path / 'data'}: get it with "
        "`python -m bbam.data.fetch emotions` (or set BBAM_DATA_DIR to a folder holding emotions/emotions.npz)")
    with pytest.raises(FileNotFoundError, match=r"not found in .*: get it with `python -m bbam\.data\.fetch scene --data-dir "):
        ds.load_dataset("scene", data_dir=tmp_path / "x")
    with pytest.raises(FileNotFoundError) as e:
        ds.load_dataset("mystery")
    assert "bbam.data.fetch" not in str(e.value) and "BBAM_DATA_DIR" in str(e.value)
    # a named set's folder (data=miml names <data folder>/miml) gets the same hint; other folders none
    assert lookup.fetch_hint(tmp_path / "empty" / "miml").startswith("get it with `python -m bbam.data.fetch miml`")
    assert lookup.fetch_hint(tmp_path / "empty") is None and lookup.fetch_hint(tmp_path / "miml") is None


def test_the_app_says_how_to_get_a_named_photo_folder(tmp_path, monkeypatch):
    from bbam.app.config import compose_config
    from bbam.app.plan import instantiate_data

    monkeypatch.setattr(lookup, "_CHECKOUT_DATA_DIR", tmp_path / "no-checkout-data")
    monkeypatch.setenv("BBAM_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*miml: get it with "
                                                r"`python -m bbam\.data\.fetch miml`"):
        instantiate_data(compose_config(["data=miml"]))


def test_train_without_the_data_says_how_to_get_it(tmp_path):
    """``python -m bbam.train data=emotions`` as a user without our data runs it: from a copy
    of the package with no data folder beside it (the compiled extension linked, not copied)."""
    if not any((REPO / "bbam").glob("_C.*")):
        pytest.skip("the compiled extension is not built in the source tree (pip install -e .)")
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "bbam", checkout / "bbam", ignore=shutil.ignore_patterns("__pycache__"),
                    copy_function=lambda s, d: os.symlink(s, d) if s.endswith((".so", ".pyd")) else shutil.copy2(s, d))
    os.symlink(REPO / "configs", checkout / "configs")
    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    env = {**os.environ, "PYTHONPATH": str(checkout), "BBAM_DATA_DIR": str(tmp_path / "empty"), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "bbam.train", "data=emotions", "train.progress=false"], cwd=tmp_path / "run",
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "python -m bbam.data.fetch emotions" in lines[0] and "BBAM_DATA_DIR" in lines[0]
    assert "shared" not in lines[0]  # the copy really has no data folder beside it
