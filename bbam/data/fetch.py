"""Download the named benchmark datasets from their public sources: ``python -m bbam.data.fetch``.

``python -m bbam.data.fetch emotions scene`` (or ``--all``; ``--list`` shows the sets) gets
each set's original files, checks every file against the SHA-256 pinned below (a changed
or truncated file is refused, not converted), converts them to the layout
:func:`bbam.data.load_dataset` finds by name and stores it under ``--data-dir``, else the
first folder of ``$BBAM_DATA_DIR``, else ``~/.cache/bbam/data``. Files come from
``$BBAM_DATA_URL`` (default ``https://raw.githubusercontent.com``) as
``<base>/<owner>/<repo>/<commit>/<path>``: a fixed commit, so a set is the same bytes for
everyone, and a mirror or a test server can stand in for GitHub.

Everything is downloaded and converted in a hidden temporary folder inside the data
folder and moved into place with ``os.replace`` only once all of it checked out, so a
failure (checksum, HTTP error, timeout, Ctrl-C) leaves nothing half-written behind.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .arff import load_arff_pair

__all__ = ["DatasetSource", "FetchError", "SOURCES", "fetch", "download_dir", "is_present", "main"]

URL_ENV = "BBAM_DATA_URL"
DEFAULT_URL = "https://raw.githubusercontent.com"
TIMEOUT_S = 60.0  # seconds without data before a download is given up (urlopen's timeout)
PARALLEL = 8  # concurrent downloads for the sets of many small files (miml's 2,000 photos)


class FetchError(Exception):
    """A download or conversion refused with a one-line reason (the CLI prints it, status 2)."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a set comes from and how it becomes our layout.

    ``files`` maps each path in the repository to the SHA-256 of its bytes; ``manifest`` is
    for sets of too many files to pin one by one: (paths, SHA-256 of the ``sha256sum``-style
    lines ``"<sha256>  <path>\\n"`` of all of them, in that order). ``build(src, out)`` reads
    the downloads under ``src/<path>`` and writes ``out/<set folder>/...``; every entry of a
    set folder it writes replaces the same entry of the data folder. The set counts as
    present when all ``outputs`` (relative to the data folder) exist. ``howto``: no public
    source serves the set; ``fetch`` then refuses with this line saying how to build it.
    """

    repo: str
    commit: str
    files: dict[str, str]
    build: Callable[[Path, Path], None] | None
    outputs: tuple[str, ...]
    manifest: tuple[tuple[str, ...], str] | None = None
    howto: str = ""


# ----------------------------------------------------------------------------- converters
def _mulan_builder(name: str) -> Callable[[Path, Path], None]:
    """MULAN's official train/test ARFF pair -> ``<name>/<name>.npz``: rows are the train
    block then the test block, labels named by the ``.xml`` header, in ARFF column order."""

    def build(src: Path, out: Path) -> None:
        base = src / "data" / "multi-label" / name / name
        d = load_arff_pair(f"{base}-train.arff", f"{base}-test.arff", xml_path=f"{base}.xml", name=name)
        (out / name).mkdir(parents=True)
        with open(out / name / f"{name}.npz", "wb") as f:  # compressed: bibtex is 56 MB as raw float32
            np.savez_compressed(f, X=d.X.numpy(), Y=d.Y.numpy(), label_names=np.array(d.label_names, dtype=str),
                                feature_names=np.array(d.feature_names, dtype=str), train_idx=d.train_idx.numpy(),
                                test_idx=d.test_idx.numpy())

    return build


_REUTERS_DOC = re.compile(r"<REUTERS([^>]*)>(.*?)</REUTERS>", re.S)
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
_SIGNATURE = re.compile(r"\s*reuter\s*$", re.I)
_TOKEN = re.compile(r"[a-z]{2,}")


def _element(text: str, tag: str) -> str:
    m = re.search(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", text, re.S)
    return m.group(1) if m else ""


def reuters_records(sgml_texts: Iterable[str]) -> list[dict]:
    """The ModApte subset of the Reuters-21578 SGML files (Lewis): TOPICS="YES" documents of
    LEWISSPLIT TRAIN or TEST, topics cut to the 90 with a training and a test document,
    documents without one of them dropped; train block then test block, in file order.
    ``body`` is the BODY text (the whole TEXT of an unprocessed story), entities unescaped,
    without the trailing "Reuter" signature; ``labels`` keep the file's order."""
    docs = []
    for text in sgml_texts:
        for m in _REUTERS_DOC.finditer(text):
            attrs, inner = dict(_ATTRIBUTE.findall(m.group(1))), m.group(2)
            if attrs.get("TOPICS") != "YES" or attrs.get("LEWISSPLIT") not in ("TRAIN", "TEST"):
                continue
            unprocessed = re.search(r'<TEXT[^>]*TYPE="UNPROC"', inner) is not None
            body = html.unescape(_element(inner, "TEXT" if unprocessed else "BODY")).strip("\x02\x03 \t\r\n")
            docs.append(dict(doc_id=int(attrs["NEWID"]), split=attrs["LEWISSPLIT"].lower(),
                             topics=list(dict.fromkeys(re.findall(r"<D>(.*?)</D>", _element(inner, "TOPICS")))),
                             title=html.unescape(_element(inner, "TITLE")).strip(), body=_SIGNATURE.sub("", body)))
    seen = {s: {t for d in docs if d["split"] == s for t in d["topics"]} for s in ("train", "test")}
    kept = seen["train"] & seen["test"]
    out = []
    for split in ("train", "test"):
        for d in docs:
            labels = [t for t in d["topics"] if t in kept]
            if d["split"] == split and labels:
                out.append(dict(row=len(out), doc_id=d["doc_id"], split=split, labels=labels,
                                title=d["title"], body=d["body"]))
    return out


def reuters_arrays(records: list[dict], vocab_size: int = 2000) -> dict[str, np.ndarray]:
    """Bag of words of ``reuters_records``: tokens are lowercase ``[a-z]{2,}`` of title and
    body, the ``vocab_size`` terms of highest training-set document frequency (ties by
    term), raw counts; labels sorted by name."""
    tokens = [_TOKEN.findall(f"{r['title']}\n{r['body']}".lower()) for r in records]
    df = Counter(w for r, t in zip(records, tokens) if r["split"] == "train" for w in set(t))
    vocab = sorted(df, key=lambda w: (-df[w], w))[:vocab_size]
    col = {w: j for j, w in enumerate(vocab)}
    label_names = sorted({lab for r in records for lab in r["labels"]})
    lab = {n: j for j, n in enumerate(label_names)}
    X = np.zeros((len(records), len(vocab)), np.float32)
    Y = np.zeros((len(records), len(label_names)), np.int8)
    for i, (r, t) in enumerate(zip(records, tokens)):
        np.add.at(X[i], [col[w] for w in t if w in col], 1)
        Y[i, [lab[n] for n in r["labels"]]] = 1
    split = np.array([r["split"] for r in records])
    return dict(X=X, Y=Y, train_idx=np.flatnonzero(split == "train").astype(np.int64),
                test_idx=np.flatnonzero(split == "test").astype(np.int64), label_names=np.array(label_names),
                feature_names=np.array(vocab), doc_ids=np.array([r["doc_id"] for r in records], np.int64))


def _build_reuters(src: Path, out: Path) -> None:
    """SGML (latin-1: one story holds a byte 0xFC) -> texts jsonl + bag-of-words npz."""
    files = sorted((src / "sgm-data").glob("reut2-*.sgm"))
    records = reuters_records(f.read_text(encoding="latin-1") for f in files)
    folder = out / "reuters21578"
    folder.mkdir(parents=True)
    with open(folder / "reuters21578_texts.jsonl", "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(folder / "reuters21578.npz", "wb") as f:
        np.savez_compressed(f, **reuters_arrays(records))


_MIML_IMAGES = tuple(f"miml_dataset/images/{i}.jpg" for i in range(1, 2001))


def _build_miml(src: Path, out: Path) -> None:
    """The photo folder of ``data=image_folder``: ``images/<n>.jpg``; ``labels.tsv`` from the
    csv's 0/1 columns; ``split.tsv``: a fixed 80/20 split (the source has none), the
    first fifth of numpy ``default_rng(0)``'s permutation of the csv rows is the test set."""
    with open(src / "miml_dataset" / "miml_labels_1.csv", newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    folder = out / "miml"
    (folder / "images").mkdir(parents=True)
    test = set(np.random.default_rng(0).permutation(len(rows))[: len(rows) // 5].tolist())
    labels, split = [], []
    for k, row in enumerate(rows):
        os.replace(src / "miml_dataset" / "images" / row[0], folder / "images" / row[0])
        names = [h for h, v in zip(header[1:], row[1:]) if v.strip() == "1"]
        labels.append(f"images/{row[0]}\t{','.join(names)}\n")
        split.append(f"images/{row[0]}\t{'test' if k in test else 'train'}\n")
    (folder / "labels.tsv").write_text("".join(labels), encoding="utf-8")
    (folder / "split.tsv").write_text("".join(split), encoding="utf-8")


# ----------------------------------------------------------------------------- the sets
_MULAN, _MULAN_COMMIT = "tsoumakas/mulan", "43f6389095ad71984264db4387a8074b22bc7d4a"
_MULAN_SHA256 = {  # train arff, test arff, xml label header
    "emotions": ("bbe704106c79bb8fb99c1d1d2e9bde081d6a2daeb01f100862f11fd91a3c1f98",
                 "f13d4b746b7b5c8eb484bd751d6ac463d4560dff998a93516a5c1fe35daf6c8f",
                 "dbce8e6ccbbb2fcbfd9e9edbb230d7ed12692c6e13f59fdbc0161fa9b6cf2dc0"),
    "scene": ("b53ba93bdf412de922e3960389bcee24744fa3e872ce610511fc1d750888b64d",
              "ea38d20296b3ff7e220f477a3b802a9bcb2d768881fe6ee163efbc97ea527a42",
              "55d8b247b949ad5c52e5a73d8c6775ec6e5469ce9682465b45b333b68ee4bcc5"),
    "yeast": ("e759dc991ff54694a4ff9c4314f3be0d6fd2b1994a4b563f57e416394c6aebbd",
              "4aaac102bff9669a765bf0b378602e5cc8c3b181048282e2f003117b496d552a",
              "c3056cc26444b5158b1588d1b73bec9c45429e10f0957ad085903423cb81f247"),
    "enron": ("2988cefc1cdf7a8004a20ef84615cc8fa1b5d7434c16687283b41454e2d9d194",
              "2f3aad54a8f54caaab4ab01246fe9dd385ba944a2633028f52747b57eac5474e",
              "ed40c92d7f613eed51714912cab10dddc4ce456262137d8fef230d44c7f4457b"),
    "medical": ("c764f45756ab1c553b8b4eaaf5605a5610a43bbbcf37492d0f1a12bf9c9e2244",
                "6be472e75a6c0b0916187f343a398011b1b26f8f0ddc682c575312ad3532f6c4",
                "51fa9d5c09e48caff3f0a0c75db1c9aa85944f8e35451f3ad8bd56fc422286ce"),
    "bibtex": ("8dcc9de6e0b2cebaec8c1f4fac78431adeeb73cfd3ab879b530a66d366e59174",
               "9b03329cde64d3f994bdf7fbbac3f3b10fe185c311cb9ae725475f59c7f3f922",
               "08fe20013c1e75dcf1888c185f5187c95e76495b8518ce289b4d3afce38d1232"),
}
_REUTERS_SHA256 = (  # sgm-data/reut2-000.sgm ... reut2-021.sgm
    "9ff9bb40624ef992a03f62aace12e697dca1087abfd9b4d06aa787a6ad3e0687",
    "1528e7e82d110d88d0234eb9619eadb7f9fd805711971df05975b92277dfdf4d",
    "99f18068d0518952987dedd78c622e5c2a584e357d264d3754696c815f3e6628",
    "78a3a8d7e04bc9d42c4614d5d5c60a4293dbe3f708df6fb5a71d9ef31f4b3fa3",
    "726342c19a65873330b412378cd6a3f0d512035f5223146ddd60930c62eb6ff0",
    "d09de619b6dd2d047d5124681f6df90550abaf592020d1c1ce338ae9b91522e7",
    "b5535c0d66b01f4976f84621a4a795afbc00d2c4bd0a1b7ae426df6630fb361d",
    "aa706007ec84a03537a3921ca976d60e11b3f99e4b9e9b2d5c81dd384d2c2062",
    "a3994583694a00b7c744097c1d7eabfcf90f2e6650cc21663e46828035a336cb",
    "29995f606dd1a9bdf907eacc9d879846c716860d9d9141676979474aaea39c7d",
    "996df6008089bd09fa5b28a4d2eb0ee5f7b9d4601cde566fed3926ac82960fa3",
    "d3a2782015247d9c2bffb8926267827fdd449c70d619435ef01a25a1c56a53ca",
    "da31035d483851f2aebce5b66d779e5e2c0ac9dcfe098596c6d544e81c5604ab",
    "8f7700bc0455fac3fcc12377ced4807b7df8aba1f21ecad059b9cc2b1cf0b8be",
    "ef936bd3e0f36cf722afa9a6957563549775af32e9e28b4f539c8737ceda83ab",
    "6d3bcec73eff871b8a5403588af814c4e50a0de6bc25707480522ab836f74026",
    "be2f03a185fff70131f3b4fdbd6229b7ee2be077eba9691eaa597c8cfbda8812",
    "f370e610b4b1342e41a98e0c426a08541044bd1d7e539674f32372a6060b73b5",
    "a5f971bf25448e915781962309e669359a35fbcaf3017a806eca0590897f209a",
    "d3b07097fba2633d130b4914aceba671645985248943ce9e39c289315339dffb",
    "f6ad1b724125c202566c63b35ea0b5ee23881f8b7ed47a32829d5af05d8e860d",
    "3f5196d32869723c9042aa5756805b4e90360f1f45ea17f4594fa0e2b3630b18",
)
_REUTERS_FILES = {f"sgm-data/reut2-{i:03d}.sgm": h for i, h in enumerate(_REUTERS_SHA256)}
_REUTERS = ("mihaibogdan10/json-reuters-21578", "af8b9c6096e4a4625a490ab41b676927265c3fec")

_MULAN_ENDS = ("-train.arff", "-test.arff", ".xml")

SOURCES: dict[str, DatasetSource] = {  # tests add their own sets here
    **{name: DatasetSource(_MULAN, _MULAN_COMMIT,
                           {f"data/multi-label/{name}/{name}{end}": h for end, h in zip(_MULAN_ENDS, hs)},
                           _mulan_builder(name), (f"{name}/{name}.npz",))
       for name, hs in _MULAN_SHA256.items()},
    "reuters21578": DatasetSource(*_REUTERS, _REUTERS_FILES, _build_reuters,
                                  ("reuters21578/reuters21578.npz", "reuters21578/reuters21578_texts.jsonl")),
    "reuters21578_text": DatasetSource(*_REUTERS, _REUTERS_FILES, _build_reuters,
                                       ("reuters21578/reuters21578_texts.jsonl",)),
    "miml": DatasetSource(
        "itanvir/miml-classification", "b03da2be3e4909b26c77856a8241603f119a22d5",
        {"miml_dataset/miml_labels_1.csv": "3fc633b74fba7d62e977e63460e6583e6f54ad031e3ee467bea30ae1961c47c3"},
        _build_miml, ("miml/labels.tsv", "miml/split.tsv", "miml/images"),
        manifest=(_MIML_IMAGES, "099d42f0766c73f97a8a8e1feed024359b623871b777a8710b133747120e928a")),
}


# ----------------------------------------------------------------------------- fetching
def _first_data_dirs() -> list[Path]:
    """The folders :func:`bbam.data.lookup.default_data_dirs` searches first: ``$BBAM_DATA_DIR``,
    else ``~/.cache/bbam/data`` (the same rule, not imported: lookup imports this module)."""
    env = [Path(s).expanduser() for s in os.environ.get("BBAM_DATA_DIR", "").split(os.pathsep) if s]
    return env or [Path.home() / ".cache" / "bbam" / "data"]


def download_dir() -> Path:
    """Where sets are stored: the first folder of ``$BBAM_DATA_DIR``, else ``~/.cache/bbam/data``."""
    return _first_data_dirs()[0]


def _source(name: str) -> DatasetSource:
    if name not in SOURCES:
        raise FetchError(f"unknown dataset {name!r}; choose from: {', '.join(SOURCES)}")
    return SOURCES[name]


def is_present(name: str, data_dir: str | os.PathLike[str] | None = None) -> bool:
    root = Path(data_dir) if data_dir is not None else download_dir()
    return all((root / rel).exists() for rel in _source(name).outputs)


def _download(url: str, dest: Path, label: str | None, base: str) -> str:
    """Stream ``url`` into ``dest`` (a progress bar in bytes when ``label``); return its sha256."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    hint = f"check the network, or set {URL_ENV} to a mirror laid out as <owner>/<repo>/<commit>/<path> (now {base})"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r, open(dest, "wb") as f:
            size = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                      file=sys.stderr, disable=label is None) as bar:
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise FetchError(f"HTTP {e.code} {e.reason} for {url}; {hint}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # refused, reset, cut short, timeout
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise FetchError(f"no data for {TIMEOUT_S:g} s from {url}; {hint}") from None
        raise FetchError(f"cannot download {url}: {reason}; {hint}") from None
    return digest.hexdigest()


def _check(name: str, what: str, url: str, expected: str, got: str) -> None:
    if got != expected:
        raise FetchError(f"checksum mismatch for {what} of {name!r} ({url}): expected sha256 {expected}, "
                         f"got {got}; nothing was kept")


def fetch(name: str, data_dir: str | os.PathLike[str] | None = None, force: bool = False,
          base_url: str | None = None, progress: bool = True) -> Path | None:
    """Download, check and convert the set ``name`` into ``data_dir`` (default
    :func:`download_dir`); return its folder, or None when it was already present
    (``force`` downloads it again). Raises :class:`FetchError` with a one-line reason."""
    src = _source(name)
    if src.howto:
        raise FetchError(f"{name!r} has no public download: {src.howto}")
    root = Path(data_dir).expanduser() if data_dir is not None else download_dir()
    if not force and is_present(name, root):
        return None
    base = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".fetch-{name}-", dir=root))
    try:
        url = lambda path: f"{base}/{src.repo}/{src.commit}/{path}"  # noqa: E731
        for path, sha in src.files.items():
            got = _download(url(path), stage / "src" / path, path.rsplit("/", 1)[-1] if progress else None, base)
            _check(name, path, url(path), sha, got)
        if src.manifest is not None:
            paths, sha = src.manifest
            from tqdm import tqdm

            with ThreadPoolExecutor(PARALLEL) as pool, tqdm(total=len(paths), unit="file", desc=f"{name} files",
                                                            file=sys.stderr, disable=not progress) as bar:
                jobs = [pool.submit(_download, url(p), stage / "src" / p, None, base) for p in paths]
                try:
                    hashes = []
                    for job in jobs:
                        hashes.append(job.result())
                        bar.update(1)
                finally:
                    for job in jobs:
                        job.cancel()
            lines = "".join(f"{h}  {p}\n" for h, p in zip(hashes, paths)).encode()
            _check(name, f"the {len(paths)} files {paths[0]} ... {paths[-1]} (their sha256 list)",
                   url(paths[0].rsplit("/", 1)[0]), sha, hashlib.sha256(lines).hexdigest())
        assert src.build is not None
        out = stage / "out"
        src.build(stage / "src", out)
        for folder in sorted(out.iterdir()):
            (root / folder.name).mkdir(exist_ok=True)
            for entry in sorted(folder.iterdir()):
                dest = root / folder.name / entry.name
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                os.replace(entry, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return root / src.outputs[0].split("/")[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bbam.data.fetch", description=(
        "Download named multi-label datasets from their public sources, check their SHA-256 and convert them "
        f"to the layout bbam finds by name (data=<name>). Files come from ${URL_ENV} (default {DEFAULT_URL})."))
    p.add_argument("names", nargs="*", metavar="NAME", help=f"sets to get: {', '.join(SOURCES)}")
    p.add_argument("--all", action="store_true", help="get every set")
    p.add_argument("--list", action="store_true", help="show the sets, their source and whether they are present")
    p.add_argument("--force", action="store_true", help="download again a set already present")
    p.add_argument("--data-dir", help="folder to store the sets in (default: first folder of $BBAM_DATA_DIR, "
                                      "else ~/.cache/bbam/data)")
    args = p.parse_args(argv)
    root = Path(args.data_dir).expanduser() if args.data_dir else download_dir()
    try:
        if args.list:
            for name, src in SOURCES.items():
                state = "present" if is_present(name, root) else f"no download: {src.howto}" if src.howto else "absent"
                print(f"{name:<18} {state:<8} {root / src.outputs[0]}  (from {src.repo})")
            return 0
        names = list(SOURCES) if args.all else args.names
        if not names:
            raise FetchError(f"name the sets to get, or --all (sets: {', '.join(SOURCES)})")
        for name in names:
            _source(name)
        for name in dict.fromkeys(names):
            where = fetch(name, root, force=args.force)
            print(f"{name}: " + (f"already in {root / SOURCES[name].outputs[0]} (--force gets it again)"
                                 if where is None else f"stored in {where}"), file=sys.stderr)
        if args.data_dir and root.resolve() not in [d.resolve() for d in _first_data_dirs() + [Path("data")]]:
            print(f"note: set BBAM_DATA_DIR={root} so that bbam finds these sets by name", file=sys.stderr)
    except (FetchError, OSError, ValueError) as e:  # ValueError: a source file our readers reject
        print(f"bbam.data.fetch: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bbam.data.fetch: interrupted; the set being fetched was not kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
