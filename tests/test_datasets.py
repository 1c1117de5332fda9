"""Tests for bbam.data: synthetic data, loaders, stratified splits, errors.

Real-data tests use the shared datasets directory (``$BBAM_DATA_DIR`` or
``<repo>/../shared/data``) and are skipped with a reason when it is absent.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bbam import data as ds

DATA_DIR = Path(os.environ.get("BBAM_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "emotions" / "emotions.npz").is_file(),
    reason=f"real datasets not found at {DATA_DIR}: python -m bbam.data.fetch --all downloads them into $BBAM_DATA_DIR",
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# MultiLabelData
# ---------------------------------------------------------------------------
def test_container_properties_and_coercion():
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.int64)
    d = ds.MultiLabelData(X, Y, name="toy", train_idx=[0, 1, 2], test_idx=np.array([3]))
    assert d.X.dtype == torch.float32 and d.Y.dtype == torch.int8
    assert (d.num_samples, d.num_features, d.num_labels) == (4, 3, 2)
    assert d.label_names == ["label_0", "label_1"] and d.feature_names == ["f0", "f1", "f2"]
    assert d.train_idx.dtype == torch.long and d.test_idx.tolist() == [3]
    assert torch.allclose(d.label_frequencies(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert "N=4" in repr(d) and "split=3/1" in repr(d)
    sub = d.subset(torch.tensor([2, 0]))
    assert sub.Y.tolist() == [[1, 1], [1, 0]] and sub.train_idx is None
    b = ds.MultiLabelData(torch.zeros(2, 1), torch.tensor([[True], [False]]))
    assert b.Y.dtype == torch.int8 and b.Y.tolist() == [[1], [0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(X=torch.zeros(3, 2), Y=torch.tensor([[0], [2], [1]])), r"toy.*labels must be 0 or 1.*row 1"),
        (dict(X=torch.zeros(3, 2), Y=-torch.ones(3, 1)), r"labels must be 0 or 1"),
        (dict(X=torch.tensor([[0.0], [float("nan")]]), Y=torch.zeros(2, 1)), r"NaN/Inf.*row 1, column 0"),
        (dict(X=torch.tensor([[float("inf")], [0.0]]), Y=torch.zeros(2, 1)), r"NaN/Inf"),
        (dict(X=torch.zeros(3, 2), Y=torch.zeros(4, 1)), r"3 rows but Y has 4"),
        (dict(X=torch.zeros(3), Y=torch.zeros(3, 1)), r"X must be 2-D"),
        (dict(X=torch.zeros(3, 2), Y=torch.zeros(3)), r"Y must be 2-D"),
        (dict(X=torch.zeros(2, 2), Y=torch.zeros(2, 1), label_names=["a", "b"]), r"label_names has 2 entries, expected 1"),
        (dict(X=torch.zeros(2, 2), Y=torch.zeros(2, 1), feature_names=["a"]), r"feature_names has 1 entries, expected 2"),
        (dict(X=torch.zeros(2, 2), Y=torch.zeros(2, 1), test_idx=[2]), r"test_idx has indices outside"),
        (dict(X=torch.zeros(2, 2), Y=torch.zeros(2, 1), train_idx=[0, 0]), r"duplicate"),
        (dict(X=torch.zeros(2, 2), Y=torch.zeros(2, 1), train_idx=[0, 1], test_idx=[1]), r"overlap"),
    ],
)
def test_container_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ds.MultiLabelData(name="toy", **kwargs)


def test_container_type_errors():
    with pytest.raises(TypeError, match="X must be a torch.Tensor or numpy array"):
        ds.MultiLabelData([[0.0]], torch.zeros(1, 1))
    with pytest.raises(TypeError, match="train_idx must hold integer indices"):
        ds.MultiLabelData(torch.zeros(2, 1), torch.zeros(2, 1), train_idx=torch.tensor([0.0]))


def test_container_error_names_source():
    with pytest.raises(ValueError, match=r"/some/file\.npz"):
        ds.MultiLabelData(torch.zeros(1, 1), torch.tensor([[3]]), name="x", source="/some/file.npz")


# ---------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------
def test_synthetic_deterministic():
    a = ds.make_synthetic()  # its speed is bench/epoch.py's "data s", not a test's
    b = ds.make_synthetic()
    c = ds.make_synthetic(seed=1)
    assert torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y)
    assert not torch.equal(a.X, c.X) and not torch.equal(a.Y, c.Y)
    assert (a.num_samples, a.num_features, a.num_labels) == (6000, 64, 20)
    assert a.X.dtype == torch.float32 and a.Y.dtype == torch.int8
    assert torch.isfinite(a.X).all()
    assert a.train_idx is None and a.test_idx is None
    assert len(set(a.label_names)) == 20 and len(a.feature_names) == 64
    # standardised features
    assert a.X.mean(0).abs().max() < 1e-3 and (a.X.std(0) - 1).abs().max() < 1e-2


def test_synthetic_long_tail_and_positives():
    d = ds.make_synthetic()
    counts = d.Y.sum(0).numpy().astype(np.int64)
    assert counts.min() >= 50, counts  # every label has many positives at the default size
    assert np.all(np.diff(counts) <= 0), "labels are ordered by decreasing frequency"
    assert counts.max() >= 20 * counts.min()  # long tail
    assert counts[:3].sum() >= 0.5 * counts.sum()  # a few frequent labels dominate
    assert (counts < 0.03 * d.num_samples).sum() >= d.num_labels // 2  # many rare labels
    card = d.Y.sum(1).double().mean().item()
    assert 1.0 <= card <= 2.0
    assert (d.Y.sum(1) >= 2).double().mean() > 0.1  # genuinely multi-label


def test_synthetic_cooccurrence():
    d = ds.make_synthetic()
    Y = d.Y.double().numpy()
    p = Y.mean(0)
    joint = (Y.T @ Y) / len(Y)
    lift = joint / np.outer(p, p)
    np.fill_diagonal(lift, np.nan)
    # labels driven by shared topics co-occur far more than independence predicts ...
    assert np.nanmax(lift) > 5
    assert (lift > 2).sum() >= d.num_labels
    # ... and labels of different topics rarely do
    assert (lift < 0.5).sum() >= d.num_labels


def test_synthetic_class_conditional_features():
    d = ds.make_synthetic()
    X, Y = d.X.numpy(), d.Y.numpy().astype(bool)
    for k in (0, d.num_labels - 1):  # most frequent and rarest label
        gap = np.linalg.norm(X[Y[:, k]].mean(0) - X[~Y[:, k]].mean(0))
        assert gap > 2.0, (k, gap)


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_samples=60, num_features=5, num_labels=30, num_topics=1),
        dict(num_samples=300, num_features=8, num_labels=3, num_topics=7, seed=5),
        dict(num_samples=1000, num_labels=1),
    ],
)
def test_synthetic_other_sizes(kw):
    d = ds.make_synthetic(**kw)
    assert d.num_samples == kw["num_samples"] and d.num_labels == kw["num_labels"]
    assert (d.Y.sum(0) >= 1).all()
    assert torch.isfinite(d.X).all()


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        ds.make_synthetic(num_samples=0)
    with pytest.raises(ValueError, match="max_freq"):
        ds.make_synthetic(max_freq=1.5)


# ---------------------------------------------------------------------------
# real ARFF files == shared .npz
# ---------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("name", ["emotions", "medical", "enron"])
def test_arff_pair_matches_npz(name):
    d = DATA_DIR / name
    got = ds.load_arff_pair(d / f"{name}-train.arff", d / f"{name}-test.arff")
    ref = np.load(d / f"{name}.npz")
    assert got.name == name
    assert np.array_equal(got.X.numpy(), ref["X"])
    assert np.array_equal(got.Y.numpy(), ref["Y"])
    assert got.label_names == ref["label_names"].tolist()
    assert got.feature_names == ref["feature_names"].tolist()
    assert np.array_equal(got.train_idx.numpy(), ref["train_idx"])
    assert np.array_equal(got.test_idx.numpy(), ref["test_idx"])
    # a single file (MULAN xml found next to it by stripping "-test")
    te = ds.load_arff(d / f"{name}-test.arff")
    assert np.array_equal(te.X.numpy(), ref["X"][ref["test_idx"]])
    assert np.array_equal(te.Y.numpy(), ref["Y"][ref["test_idx"]])
    # and the npz loader agrees
    npz = ds.load_npz(d / f"{name}.npz")
    assert torch.equal(npz.X, got.X) and torch.equal(npz.Y, got.Y) and npz.label_names == got.label_names


@needs_data
def test_arff_label_selection_rules(tmp_path):
    d = DATA_DIR / "medical"
    ref = np.load(d / "medical.npz")
    tr = ref["train_idx"]
    # explicit num_labels (last 45 attributes) without the xml: copy the file away from its xml
    (tmp_path / "m.arff").write_bytes((d / "medical-train.arff").read_bytes())
    a = ds.load_arff(tmp_path / "m.arff", num_labels=45)
    assert np.array_equal(a.Y.numpy(), ref["Y"][tr]) and np.array_equal(a.X.numpy(), ref["X"][tr])
    b = ds.load_arff(tmp_path / "m.arff", xml_path=d / "medical.xml")
    assert torch.equal(a.Y, b.Y) and a.label_names == b.label_names
    # medical's @relation says MEKA '-C 45' (labels first) but its labels are last:
    # without xml/num_labels the MEKA rule applies, and the xml takes precedence when present
    c = ds.load_arff(tmp_path / "m.arff")
    assert c.label_names[0] == "-"
    with pytest.raises(ds.DatasetFormatError, match=r"medical\.xml: lists 45 labels but num_labels=44"):
        ds.load_arff(tmp_path / "m.arff", xml_path=d / "medical.xml", num_labels=44)


# ---------------------------------------------------------------------------
# hand-written ARFF
# ---------------------------------------------------------------------------
MULAN_DENSE = """% a comment
@RELATION 'tiny data'

@attribute f1 numeric
@attribute 'feature two' REAL   % trailing comment is not allowed in ARFF, this is part of nothing
@attribute f3 {low,mid,high}
@attribute f4 {YES,NO}
@Attribute lab1 {0,1}
@attribute "lab 2" {0,1}

@data
% comment in data
1.5, -2, mid, YES, 1, 0
0,3e2,'high',NO,0,1
  -1,0.25,low,YES,1,1,{3}
"""


def test_arff_dense_mulan_xml(tmp_path):
    text = MULAN_DENSE.replace("   % trailing comment is not allowed in ARFF, this is part of nothing", "")
    p = write(tmp_path / "tiny.arff", text)
    write(
        tmp_path / "tiny.xml",
        '<?xml version="1.0" encoding="utf-8"?>\n<labels xmlns="http://mulan.sourceforge.net/labels">'
        '<label name="lab 2"></label><label name="lab1"></label></labels>',
    )
    d = ds.load_arff(p)
    assert d.label_names == ["lab1", "lab 2"]  # ARFF order, not XML order
    assert d.feature_names == ["f1", "feature two", "f3", "f4"]
    assert d.X.tolist() == [[1.5, -2.0, 1.0, 1.0], [0.0, 300.0, 2.0, 0.0], [-1.0, 0.25, 0.0, 1.0]]
    assert d.Y.tolist() == [[1, 0], [0, 1], [1, 1]]
    assert d.name == "tiny" and str(p) in d.source
    # num_labels instead of the xml gives the same (last 2 attributes)
    p2 = write(tmp_path / "noxml.arff", text)
    assert torch.equal(ds.load_arff(p2, num_labels=2).Y, d.Y)
    # the xml of a -train/-test file is found by stripping the suffix
    p3 = write(tmp_path / "tiny-train.arff", text)
    assert ds.load_arff(p3).label_names == ["lab1", "lab 2"]


def test_arff_meka_header_first_and_last(tmp_path):
    first = write(
        tmp_path / "meka.arff",
        "@relation 'Example: -C 2 -split 0'\n@attribute A {0,1}\n@attribute B {0,1}\n"
        "@attribute x1 numeric\n@attribute x2 numeric\n@data\n1,0,0.5,1\n0,1,2,3\n",
    )
    d = ds.load_arff(first)
    assert d.label_names == ["A", "B"] and d.Y.tolist() == [[1, 0], [0, 1]]
    assert d.X.tolist() == [[0.5, 1.0], [2.0, 3.0]]
    last = write(
        tmp_path / "meka_last.arff",
        "@relation \"Example: -C -2\"\n@attribute x1 numeric\n@attribute A {0,1}\n@attribute B numeric\n"
        "@data\n{0 4, 2 1}\n{1 1}\n",
    )
    d = ds.load_arff(last)
    assert d.label_names == ["A", "B"] and d.feature_names == ["x1"]
    assert d.Y.tolist() == [[0, 1], [1, 0]] and d.X.tolist() == [[4.0], [0.0]]


def test_arff_sparse_mixed(tmp_path):
    p = write(
        tmp_path / "sp.arff",
        "@relation sp\n@attribute w1 numeric\n@attribute w2 numeric\n@attribute 'w 3' {1,0}\n"
        "@attribute l1 {0,1}\n@attribute l2 {0,1}\n@data\n"
        "{0 1.5,3 1}\n"
        "{}\n"
        "{ 1 2 , 2 '0' , 4 1 }\n"
        "0,0,1,1,1\n"
        "{4 1},{0.3}\n",
    )
    d = ds.load_arff(p, num_labels=2)
    # omitted nominal entries take the first declared value ('1' for w 3)
    assert d.X.tolist() == [[1.5, 0, 1], [0, 0, 1], [0, 2, 0], [0, 0, 1], [0, 0, 1]]
    assert d.Y.tolist() == [[1, 0], [0, 0], [0, 1], [1, 1], [0, 1]]


@pytest.mark.parametrize(
    "body, match",
    [
        ("1,2,0\n1,2\n", r"line 8: expected 3 comma-separated values, got 2"),
        ("1,2,0\n1,2,5\n", r"line 8: .*'l'.*value 5 is not one of \['0', '1'\]"),
        ("1,x,0\n", r"line 7: attribute 'b': 'x' is not a number"),
        ("1,?,0\n", r"line 7: missing value '\?'"),
        ("{0 1, 7 1}\n", r"line 7: sparse index 7 outside \[0, 3\)"),
        ("{0 1, 1}\n", r"line 7: sparse entry '1' is not 'index value'"),
        ("{0 1, 1 2\n", r"line 7: sparse row without closing"),
        ("1,'2,0\n", r"line 7: unterminated quote"),
        ("1,nan,0\n", r"line 7: attribute 'b': non-finite"),
    ],
)
def test_arff_malformed_rows_name_file_and_line(tmp_path, body, match):
    p = write(tmp_path / "bad.arff", "@relation r\n\n@attribute a numeric\n@attribute b numeric\n@attribute l {0,1}\n@data\n" + body)
    with pytest.raises(ds.DatasetFormatError, match=match) as e:
        ds.load_arff(p, num_labels=1)
    assert str(p) in str(e.value) and e.value.path == str(p)


def test_arff_label_value_outside_01(tmp_path):
    p = write(tmp_path / "lab.arff", "@relation r\n@attribute a numeric\n@attribute l numeric\n@data\n1,1\n2,0\n3,2\n")
    with pytest.raises(ds.DatasetFormatError, match=r"lab\.arff, line 7: label attribute 'l' has value 2"):
        ds.load_arff(p, num_labels=1)


@pytest.mark.parametrize(
    "header, match",
    [
        ("@relation r\n@attribute a numeric\n@attribute l {0,1}\n", r"no @data section"),
        ("@relation r\n@attribute s string\n@attribute l {0,1}\n@data\n", r"line 2: .*'s' has type 'string'"),
        ("@relation r\n@attribute a foo\n@data\n", r"line 2: .*unknown type 'foo'"),
        ("@relation r\n@attribute a {0,1\n@data\n", r"line 2: .*missing closing"),
        ("@relation r\n@data\n", r"line 2: @data before any @attribute"),
        ("hello\n", r"line 1: expected an @relation"),
        ("@relation r\n@frobnicate\n", r"line 2: unsupported declaration"),
    ],
)
def test_arff_malformed_header(tmp_path, header, match):
    p = write(tmp_path / "h.arff", header)
    with pytest.raises(ds.DatasetFormatError, match=match):
        ds.load_arff(p, num_labels=1)


def test_arff_label_info_errors(tmp_path):
    p = write(tmp_path / "nolab.arff", "@relation r\n@attribute a numeric\n@attribute l {0,1}\n@data\n1,0\n")
    with pytest.raises(ds.DatasetFormatError, match=r"nolab\.arff: cannot tell which attributes are labels"):
        ds.load_arff(p)
    with pytest.raises(ValueError, match="num_labels"):
        ds.load_arff(p, num_labels=2)
    xml = write(tmp_path / "other.xml", '<labels xmlns="http://mulan.sourceforge.net/labels"><label name="zz"/></labels>')
    with pytest.raises(ds.DatasetFormatError, match=r"other\.xml.*not attributes.*zz"):
        ds.load_arff(p, xml_path=xml)
    broken = write(tmp_path / "broken.xml", "<labels><label name='a'>")
    with pytest.raises(ds.DatasetFormatError, match=r"broken\.xml"):
        ds.load_arff(p, xml_path=broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.xml"):
        ds.load_arff(p, xml_path=tmp_path / "missing.xml")
    meka = write(tmp_path / "meka0.arff", "@relation 'x: -C 5'\n@attribute a numeric\n@attribute l {0,1}\n@data\n1,0\n")
    with pytest.raises(ds.DatasetFormatError, match=r"MEKA header '-C 5' is invalid"):
        ds.load_arff(meka)


def test_arff_not_utf8(tmp_path):
    p = tmp_path / "bin.arff"
    p.write_bytes(b"@relation r\n@attribute a numeric\n@attribute l {0,1}\n@data\n\xff\xfe,1\n")
    with pytest.raises(ds.DatasetFormatError, match=r"bin\.arff, line 5: not UTF-8"):
        ds.load_arff(p, num_labels=1)


def test_arff_pair_mismatch(tmp_path):
    a = write(tmp_path / "a.arff", "@relation r\n@attribute a numeric\n@attribute l {0,1}\n@data\n1,0\n")
    b = write(tmp_path / "b.arff", "@relation r\n@attribute b numeric\n@attribute l {0,1}\n@data\n1,0\n")
    with pytest.raises(ds.DatasetFormatError, match=r"b\.arff: attributes differ"):
        ds.load_arff_pair(a, b, num_labels=1)


# ---------------------------------------------------------------------------
# LIBSVM
# ---------------------------------------------------------------------------
def test_libsvm_basic(tmp_path):
    p = write(
        tmp_path / "ml.svm",
        "# comment line\n0,2 1:0.5 3:-1\n 2:2.0\n\n1 4:1e-1   # trailing comment\n2,0,1\n",
    )
    d = ds.load_libsvm(p)
    assert (d.num_samples, d.num_features, d.num_labels) == (4, 4, 3)
    assert d.Y.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]]
    assert torch.allclose(d.X, torch.tensor([[0.5, 0, -1, 0], [0, 2, 0, 0], [0, 0, 0, 0.1], [0, 0, 0, 0]]))
    assert d.feature_names == ["1", "2", "3", "4"] and d.label_names == ["0", "1", "2"]
    wide = ds.load_libsvm(p, num_features=6, num_labels=5)
    assert wide.X.shape == (4, 6) and wide.Y.shape == (4, 5) and torch.equal(wide.X[:, :4], d.X)


def test_libsvm_byte_order_mark_and_qid(tmp_path):
    p = tmp_path / "bom.svm"
    p.write_bytes(b"\xef\xbb\xbf1 qid:3 2:1.5\n")
    d = ds.load_libsvm(p)
    assert d.Y.tolist() == [[0, 1]] and d.X.tolist() == [[0.0, 1.5]]


def test_libsvm_xc_header(tmp_path):
    p = write(tmp_path / "xc.txt", "2 5 4\n3 2:1\n0,1 5:2\n")
    d = ds.load_libsvm(p)
    assert d.X.shape == (2, 5) and d.Y.shape == (2, 4)
    assert d.Y.tolist() == [[0, 0, 0, 1], [1, 1, 0, 0]]
    bad = write(tmp_path / "xc_bad.txt", "3 5 4\n3 2:1\n")
    with pytest.raises(ds.DatasetFormatError, match=r"xc_bad\.txt: header says 3 samples but the file has 1"):
        ds.load_libsvm(bad)


@pytest.mark.parametrize(
    "text, kw, match",
    [
        ("0 1:1\n1,x 1:1\n", {}, r"line 2: label 'x' is not an integer"),
        ("0 1:1\n-1 1:1\n", {}, r"line 2: label -1 is negative"),
        ("0 0:1\n", {}, r"line 1: feature index 0 < 1"),
        ("0 1:a\n", {}, r"line 1: feature '1:a' is not 'index:value'"),
        ("0 1:1 2\n", {}, r"line 1: feature '2' is not 'index:value'"),
        ("0 5:1\n", {"num_features": 3}, r"line 1: feature index 5 > num_features=3"),
        ("0 1:1\n4 1:1\n", {"num_labels": 3}, r"line 2: label 4 outside \[0, 3\)"),
        ("0 1:inf\n", {}, r"line 1: feature '1:inf' is not finite"),
        ("0 3:1 2:1\n", {}, r"line 1: feature index 2 after 3: indices must be ascending"),
        ("0 1:1\n1,2.5 1:1\n", {}, r"line 2: label '2.5' is not an integer"),
        ("2 5 4\n0 1:1\n5 2:1\n", {}, r"line 3: label 5 outside \[0, 4\) \(header\)"),
        ("2 5 4\n0 6:1\n1 2:1\n", {}, r"line 2: feature index 6 > 5 \(header\)"),
        ("0 1:1\n" * 3000 + "0 1:1 x\n", {}, r"line 3001: feature 'x' is not 'index:value'"),
    ],
)
def test_libsvm_errors(tmp_path, text, kw, match):
    p = write(tmp_path / "bad.libsvm", text)
    with pytest.raises(ds.DatasetFormatError, match=match) as e:
        ds.load_libsvm(p, **kw)
    assert str(p) in str(e.value)


# ---------------------------------------------------------------------------
# npz, dispatch, missing files
# ---------------------------------------------------------------------------
def test_npz_roundtrip_and_errors(tmp_path):
    d = ds.make_synthetic(num_samples=200, num_features=6, num_labels=4)
    d.train_idx, d.test_idx = torch.arange(150), torch.arange(150, 200)
    p = ds.save_npz(d, tmp_path / "syn.npz")
    e = ds.load_npz(p)
    assert torch.equal(e.X, d.X) and torch.equal(e.Y, d.Y)
    assert e.label_names == d.label_names and e.feature_names == d.feature_names
    assert torch.equal(e.train_idx, d.train_idx) and torch.equal(e.test_idx, d.test_idx)
    assert e.name == "syn"

    np.savez(tmp_path / "badlab.npz", X=np.zeros((3, 2), np.float32), Y=np.array([[0], [1], [2]], np.int8))
    with pytest.raises(ds.DatasetFormatError, match=r"badlab\.npz: labels must be 0 or 1; found 2 at row 2"):
        ds.load_npz(tmp_path / "badlab.npz")
    np.savez(tmp_path / "nokey.npz", X=np.zeros((3, 2), np.float32))
    with pytest.raises(ds.DatasetFormatError, match=r"nokey\.npz: missing required key 'Y'"):
        ds.load_npz(tmp_path / "nokey.npz")
    np.savez(tmp_path / "nan.npz", X=np.array([[np.nan]], np.float32), Y=np.zeros((1, 1), np.int8))
    with pytest.raises(ds.DatasetFormatError, match=r"nan\.npz.*NaN/Inf"):
        ds.load_npz(tmp_path / "nan.npz")
    write(tmp_path / "junk.npz", "this is not a zip archive")
    with pytest.raises(ds.DatasetFormatError, match=r"junk\.npz: not a readable \.npz"):
        ds.load_npz(tmp_path / "junk.npz")


@pytest.mark.parametrize(
    "loader",
    [ds.load_npz, ds.load_arff, ds.load_libsvm, ds.load_dataset],
)
def test_missing_file_is_named(tmp_path, loader):
    missing = tmp_path / "nope" / "absent.npz"
    if loader is ds.load_arff:
        missing = missing.with_suffix(".arff")
    elif loader is ds.load_libsvm:
        missing = missing.with_suffix(".svm")
    with pytest.raises(FileNotFoundError, match=str(missing).replace(".", r"\.")):
        loader(missing)


def test_load_dataset_dispatch(tmp_path):
    d = ds.make_synthetic(num_samples=100, num_features=4, num_labels=3)
    ds.save_npz(d, tmp_path / "a.npz")
    assert torch.equal(ds.load_dataset(tmp_path / "a.npz").Y, d.Y)
    arff = write(tmp_path / "b.arff", "@relation 'b: -C -1'\n@attribute x numeric\n@attribute l {0,1}\n@data\n1,1\n")
    assert ds.load_dataset(str(arff)).Y.tolist() == [[1]]
    for ext in (".svm", ".libsvm", ".txt"):
        f = write(tmp_path / f"c{ext}", "1 2:3\n")
        assert ds.load_dataset(f, num_labels=3).Y.tolist() == [[0, 1, 0]]
    syn = ds.load_dataset("synthetic", num_samples=50, num_features=3, num_labels=2, seed=3)
    assert torch.equal(syn.X, ds.make_synthetic(50, 3, 2, seed=3).X)
    # a directory / a name under data_dir
    (tmp_path / "toy").mkdir()
    ds.save_npz(d, tmp_path / "toy" / "toy.npz")
    assert torch.equal(ds.load_dataset(tmp_path / "toy").X, d.X)
    assert torch.equal(ds.load_dataset("toy", data_dir=tmp_path).X, d.X)
    with pytest.raises(FileNotFoundError, match=r"dataset 'absent' not found in .*: expected absent/absent\.npz"):
        ds.load_dataset("absent", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"dataset 'emotions' not found in .*: get it with `python -m bbam\.data\.fetch emotions"):
        ds.load_dataset("emotions", data_dir=tmp_path)
    write(tmp_path / "d.csv", "1,2\n")
    with pytest.raises(ds.DatasetFormatError, match=r"d\.csv: unsupported file extension"):
        ds.load_dataset(tmp_path / "d.csv")


@needs_data
def test_load_dataset_by_name_from_shared_data():
    d = ds.load_dataset("emotions", data_dir=DATA_DIR)
    assert (d.num_samples, d.num_features, d.num_labels) == (593, 72, 6)
    assert d.train_idx.numel() == 391 and d.test_idx.numel() == 202


# ---------------------------------------------------------------------------
# iterative stratification
# ---------------------------------------------------------------------------
def _max_prop_dev(Y: np.ndarray, folds) -> np.ndarray:
    p = Y.mean(0)
    return np.max([np.abs(Y[f.numpy()].mean(0) - p) for f in folds if f.numel()], axis=0)


def _check_partition(folds, n, props):
    allidx = torch.cat(folds)
    assert allidx.numel() == n and torch.unique(allidx).numel() == n
    sizes = [f.numel() for f in folds]
    assert sum(sizes) == n
    for s, p in zip(sizes, props):
        assert abs(s - n * p) < 1.0
    for f in folds:
        assert f.dtype == torch.long and torch.equal(f, f.sort().values)


def test_stratification_synthetic():
    d = ds.make_synthetic()
    Y = d.Y.numpy().astype(bool)
    for props in ([0.8, 0.2], [0.7, 0.1, 0.2], [0.2] * 5):
        folds = ds.iterative_stratification(d.Y, props, seed=0)
        _check_partition(folds, d.num_samples, props)
        dev = _max_prop_dev(Y, folds)
        assert dev.max() < 0.005, (props, dev)  # at most ~1 sample off per label and fold


@needs_data
def test_stratification_yeast_beats_random():
    z = np.load(DATA_DIR / "yeast" / "yeast.npz")
    Y = z["Y"].astype(bool)
    n = len(Y)
    props = [0.8, 0.2]
    strat, rand = [], []
    for seed in range(3):
        folds = ds.iterative_stratification(torch.from_numpy(z["Y"]), props, seed=seed)
        _check_partition(folds, n, props)
        strat.append(_max_prop_dev(Y, folds))
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
        rand.append(_max_prop_dev(Y, [perm[: folds[0].numel()], perm[folds[0].numel():]]))
    strat, rand = np.array(strat), np.array(rand)
    assert strat.max() < 0.05  # every label close in every fold
    assert np.median(strat) < 0.005  # most labels within ~2 samples of the ideal count
    assert strat.mean() < 0.5 * rand.mean()


def test_stratification_deterministic_and_seeded():
    Y = ds.make_synthetic(num_samples=500, num_labels=8).Y
    a = ds.iterative_stratification(Y, [0.5, 0.3, 0.2], seed=7)
    b = ds.iterative_stratification(Y.numpy(), [0.5, 0.3, 0.2], seed=7)
    c = ds.iterative_stratification(Y, [0.5, 0.3, 0.2], seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_stratification_small_cases():
    # a label with 2 positives in two equal folds: one each
    Y = torch.zeros(10, 2, dtype=torch.int8)
    Y[[3, 7], 0] = 1
    Y[:5, 1] = 1
    for seed in range(5):
        f0, f1 = ds.iterative_stratification(Y, [0.5, 0.5], seed=seed)
        assert Y[f0, 0].sum() == 1 and Y[f1, 0].sum() == 1
        assert Y[f0, 1].sum() in (2, 3)
    # rounding: sizes by largest remainder, summing to N; empty folds allowed
    folds = ds.iterative_stratification(torch.zeros(7, 3, dtype=torch.int8), [0.5, 0.5, 0.0], seed=0)
    assert [f.numel() for f in folds] == [4, 3, 0]
    folds = ds.iterative_stratification(torch.zeros(0, 3), [0.3, 0.7], seed=0)
    assert [f.numel() for f in folds] == [0, 0]
    # unknown (-1) entries are not positives
    folds = ds.iterative_stratification(-torch.ones(4, 1), [0.5, 0.5], seed=0)
    assert sorted(torch.cat(folds).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "props, match",
    [([0.5, 0.6], "sum to 1"), ([1.2, -0.2], ">= 0"), ([], "non-empty"), ([float("nan"), 1.0], "finite")],
)
def test_stratification_bad_proportions(props, match):
    with pytest.raises(ValueError, match=match):
        ds.iterative_stratification(torch.zeros(4, 1), props, seed=0)


# ---------------------------------------------------------------------------
# split_indices
# ---------------------------------------------------------------------------
def _check_split(sp, n):
    assert set(sp) == {"labeled", "unlabeled", "val", "test"}
    allidx = torch.cat(list(sp.values()))
    assert allidx.numel() == n and torch.unique(allidx).numel() == n  # disjoint and covering
    for v in sp.values():
        assert v.dtype == torch.long


def test_split_synthetic_sizes_and_stratification():
    d = ds.make_synthetic()
    sp = ds.split_indices(d, lb_ratio=0.05, val_ratio=0.1, test_ratio=0.2, seed=0)
    _check_split(sp, 6000)
    assert sp["test"].numel() == 1200 and sp["val"].numel() == 480
    assert sp["labeled"].numel() == round(0.05 * 4320) and sp["unlabeled"].numel() == 4320 - 216
    Y = d.Y.numpy().astype(bool)
    p = Y.mean(0)
    for key in ("test", "val", "labeled"):
        dev = np.abs(Y[sp[key].numpy()].mean(0) - p)
        assert dev.max() < 0.006, (key, dev)
    # every label (>= 60 positives) has labeled positives at a 5% ratio
    assert (d.Y[sp["labeled"]].sum(0) >= 2).all()


def test_split_seeds():
    d = ds.make_synthetic(num_samples=1000)
    a = ds.split_indices(d, 0.1, seed=0)
    b = ds.split_indices(d, 0.1, seed=0)
    c = ds.split_indices(d, 0.1, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labeled"], c["labeled"])


def test_split_edge_ratios():
    d = ds.make_synthetic(num_samples=300, num_labels=5)
    full = ds.split_indices(d, 1.0, val_ratio=0.0, test_ratio=0.0)
    _check_split(full, 300)
    assert full["labeled"].numel() == 300 and full["unlabeled"].numel() == 0
    assert full["val"].numel() == 0 and full["test"].numel() == 0
    tiny = ds.split_indices(d, 1e-6)
    _check_split(tiny, 300)
    assert tiny["labeled"].numel() == 1  # at least one labeled sample


def test_split_official_test(tmp_path):
    d = ds.make_synthetic(num_samples=400, num_labels=6)
    d.train_idx, d.test_idx = torch.arange(0, 300), torch.arange(300, 400)
    sp = ds.split_indices(d, 0.2, val_ratio=0.1, test_ratio=0.5, seed=3)
    _check_split(sp, 400)
    assert torch.equal(sp["test"], torch.arange(300, 400))  # test_ratio ignored
    assert sp["val"].numel() == 30 and sp["labeled"].numel() == 54 and sp["unlabeled"].numel() == 216


@needs_data
def test_split_official_yeast():
    d = ds.load_npz(DATA_DIR / "yeast" / "yeast.npz")
    sp = ds.split_indices(d, 0.1, seed=0)
    _check_split(sp, d.num_samples)
    assert torch.equal(sp["test"], d.test_idx)
    assert sp["val"].numel() == 150 and sp["labeled"].numel() == 135


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.1", None])
def test_split_bad_lb_ratio(bad):
    d = ds.make_synthetic(num_samples=50, num_labels=3)
    with pytest.raises(ValueError, match=r"lb_ratio must be a number in \(0, 1\]"):
        ds.split_indices(d, bad)


@pytest.mark.parametrize("arg", ["val_ratio", "test_ratio"])
@pytest.mark.parametrize("bad", [1.0, -0.5, math.inf])
def test_split_bad_other_ratios(arg, bad):
    d = ds.make_synthetic(num_samples=50, num_labels=3)
    with pytest.raises(ValueError, match=rf"{arg} must be a number in \[0, 1\)"):
        ds.split_indices(d, 0.1, **{arg: bad})


def test_split_everything_is_test():
    d = ds.MultiLabelData(torch.zeros(3, 1), torch.zeros(3, 1), test_idx=[0, 1, 2], name="allt")
    with pytest.raises(ValueError, match="allt.*no training samples"):
        ds.split_indices(d, 0.5)


def test_unlabeled_ratio_keeps_a_nested_share_of_the_unlabeled_rows():
    from bbam.data import make_synthetic
    from bbam.data.splits import split_indices

    data = make_synthetic(num_samples=400, num_features=8, num_labels=4, seed=0)
    full = split_indices(data, 0.1, seed=3)
    shares = {r: split_indices(data, 0.1, seed=3, unlabeled_ratio=r) for r in (0.1, 0.5, 1.0)}
    for r, s in shares.items():
        for name in ("labeled", "val", "test"):
            assert torch.equal(s[name], full[name])  # only the unlabeled rows change
        assert len(s["unlabeled"]) == max(1, int(np.floor(r * len(full["unlabeled"]) + 0.5)))
        assert set(s["unlabeled"].tolist()) <= set(full["unlabeled"].tolist())
    assert set(shares[0.1]["unlabeled"].tolist()) <= set(shares[0.5]["unlabeled"].tolist())
    assert torch.equal(shares[1.0]["unlabeled"], full["unlabeled"])
    with pytest.raises(ValueError, match="unlabeled_ratio"):
        split_indices(data, 0.1, unlabeled_ratio=0.0)
