"""Pluggable raw inputs: text documents (and, end to end, images through a CNN trained from scratch)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from bbam.data import DatasetFormatError, load_text_jsonl, tokenize
from bbam.app.image_models import ImageEncoder
from bbam.app.models import TextEncoder

WORDS = {"sport": ["ball", "goal", "match", "team"], "money": ["bank", "rate", "loan", "price"],
         "food": ["bread", "cocoa", "wheat", "sugar"]}


def _write_docs(path, n=150, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            labels = sorted(rng.sample(list(WORDS), rng.randint(1, 2)))
            words = [rng.choice(WORDS[lab]) for lab in labels for _ in range(6)] + ["the", "and", "of"] * 3
            rng.shuffle(words)
            fh.write(json.dumps({"title": f"doc {i}", "body": " ".join(words), "labels": labels,
                                 "split": "train" if i < int(0.7 * n) else "test"}) + "\n")


def test_tokenize():
    assert tokenize("Cocoa's PRICE rose 5% in Q2-2024, a record!") == ["cocoa", "price", "rose", "in", "record"]


def test_load_text_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    _write_docs(path)
    data = load_text_jsonl(path, vocab_size=10, max_len=32)
    assert data.X.shape == (150, 32) and data.X.dtype == torch.float32
    assert data.label_names == ["food", "money", "sport"]
    vocab = data.recipe["vocab"]
    assert vocab[0] == "<pad>" and len(vocab) == 10
    assert int(data.X.max()) < 10 and len(data.train_idx) == 105 and len(data.test_idx) == 45
    assert vocab[1:4] == ["and", "doc", "of"]  # most frequent training tokens first (ties by name)


def test_text_jsonl_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "a", "body": "b", "labels": ["x"], "split": "train"}\n{not json\n')
    with pytest.raises(DatasetFormatError, match=r"bad.jsonl, line 2: not valid JSON"):
        load_text_jsonl(bad)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_text_jsonl(tmp_path / "missing.jsonl")


def test_text_jsonl_sentence_encoder_settings_checked(tmp_path):
    path = tmp_path / "docs.jsonl"
    _write_docs(path, n=10)
    with pytest.raises(TypeError, match="'sentence_encoder' must be a mapping"):
        load_text_jsonl(path, sentence_encoder="all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match=r"unknown 'sentence_encoder' setting\(s\) \['modle'\]"):
        load_text_jsonl(path, sentence_encoder={"modle": "x"})  # checked before any model is loaded


def test_reuters_texts_match_the_npz(shared_data_dir):
    path = shared_data_dir / "reuters21578" / "reuters21578_texts.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    data = load_text_jsonl(path, max_len=64)
    npz = np.load(shared_data_dir / "reuters21578" / "reuters21578.npz")
    assert data.label_names == list(npz["label_names"])
    assert np.array_equal(data.Y.numpy(), npz["Y"])
    assert np.array_equal(data.train_idx.numpy(), npz["train_idx"])


def test_encoders_shapes():
    assert TextEncoder(in_dim=16, vocab_size=50, out_dim=8)(torch.randint(0, 50, (4, 16)).float()).shape == (4, 8)
    assert ImageEncoder(out_dim=8)(torch.rand(5, 3, 8, 8)).shape == (5, 8)
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder(in_dim=4, vocab_size=5)(torch.full((1, 4), 7.0))
    with pytest.raises(ValueError, match=r"inputs must be RGB pixels \[B, 3, S, S\]"):
        ImageEncoder()(torch.rand(5, 192))


@pytest.mark.parametrize("kind", ["text", "image"])
def test_end_to_end_raw_inputs(kind, tmp_path):
    from test_train import FAST, _compose

    from bbam.train import train

    if kind == "text":
        _write_docs(tmp_path / "docs.jsonl", n=200)
        overrides = ["data=text_jsonl", f"data.path={tmp_path / 'docs.jsonl'}", "data.vocab_size=64",
                     "data.max_len=32"]
    else:
        from test_images import write_images  # skips without the vision extra

        write_images(tmp_path / "imgs", n=80)
        overrides = ["data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=16",
                     "model=image_cnn", "model.encoder.out_dim=16"]
    fast = [o for o in FAST if not o.startswith("model.encoder.")]  # the MLP's settings
    cfg = _compose([*fast, *overrides, "train.epochs=4"])
    cfg.out_dir = str(tmp_path / "run")
    result = train(cfg)
    assert np.isfinite(result["test"]["mAP"]) and result["test"]["mAP"] > 40
    assert (tmp_path / "run" / "report.md").exists()


def test_sentence_inputs_are_feature_rows_only_when_frozen():
    from bbam.app.inputs import SentenceInputs

    assert SentenceInputs({"finetune": False}, ["text"]).feature_rows  # embeddings [N, 384]
    assert not SentenceInputs({"finetune": True}, ["text"]).feature_rows  # token ids
