"""Image pipeline benchmark: where the time of an image run goes, and memory when streaming.

Usage::

    python bench/images.py [--root ../shared/data/miml] [--sizes 128,224] [--images 256] [--repeats 3]
                           [--rss-sizes 2000,8000] [--json PATH] [--quick]

Measured on the photos of ``--root`` (a folder with ``labels.tsv``; the first ``--images``
of them), at each size ``S`` of ``--sizes``, each time the median of ``--repeats``:

* **decode**: images/s decoding ``S x S`` batches of 32 through a DataLoader with 0, 1 and
  2 workers; and decode + the weak and strong views (:mod:`bbam.vision.augment`, made in
  the main process as in training);
* **augment**: images/s of the weak and of the strong view alone on decoded batches;
* **frozen features**: images/s of EfficientNet-Lite0's forward pass (eval, batch 64) on
  decoded images, its FLOPs per image (``torch.utils.flop_counter``) and the GFLOP/s
  reached; and the same forward in the NCHW layout instead of channels-last;
* **fine-tuning step**: images/s of one optimizer step (forward, backward, AdamW) of the
  backbone + head + cosine classifier on a batch of 32, with FLOPs (3 x the forward's)
  and GFLOP/s;
* **views of one unlabeled batch of 128** (frozen backbone): feature-space views
  (:class:`bbam.app.views.FeatureViews` on cached features) against image-space views
  (decode, weak + strong augmentation, two backbone passes), the ratio of the two;
* **runtimes** (``--runtimes``): cold frozen features of the ``--images`` photos end to end
  (decoding in 2 workers + forward, ``bbam.vision.features.image_features`` without its
  cache) with ``runtime=torch`` and ``runtime=onnx``, interleaved; each runtime's forward
  alone on a decoded batch of 64 with its GFLOP/s and the fraction of the cores' FP32 peak
  (``--peak-gflops``; default: cores x clock x FLOP/cycle, see :func:`_peak_gflops`); the
  sentence encoder's texts/s, GFLOP/s and share of the peak per runtime on ``--texts`` (the
  first ``--num-texts`` documents), in the default batches (8 texts on a CPU) and in
  batches of 64; one weak and one strong view pass of the view bank (photos/s, and the bank's
  build time for ``V`` = 4 over the ``--images`` photos); a fine-tuning step compiled
  (``torch.compile``, as ``train.compile=true``) against eager;
* **peak RSS** of a child process (plus its decoding workers) that streams every image
  of a set of ``N`` rows (``--rss-sizes``; MIML's files repeated) through the DataLoader,
  beside the bytes a whole-set pixel tensor would take.

Noisy machines: compare ratios within one run; absolute times only on a quiet machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocations, thread pools, first-call dispatch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _files(root: Path, n: int) -> List[str]:
    from bbam.data.images import read_label_file

    rows = read_label_file(root / "labels.tsv", root)
    return [f for f, _ in rows][:n]


def _flops(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _decode(rows, workers: int, views: bool) -> None:
    from bbam.vision.features import image_loader
    from bbam.vision.augment import strong_augment, weak_augment

    g = torch.Generator().manual_seed(0)
    for pixels in image_loader(rows, 32, workers):
        if views:
            x = pixels.float().div_(255)
            weak_augment(x, g)
            strong_augment(x, g)


def _training_step(run: Callable, model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> Callable[[], float]:
    """One fine-tuning step of ``model`` (forward through ``run``: the model or its compiled
    form), BCE on 20 x the cosine logits, AdamW; returns the loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        _, logits = run(xb)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(20 * logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def measure_size(files: List[str], size: int, repeats: int) -> Dict[str, float]:
    from bbam.app.models import CosineClassifier, MultiLabelModel
    from bbam.app.image_models import PretrainedImageEncoder
    from bbam.app.views import FeatureViews
    from bbam.data.image_rows import ImageRows
    from bbam.vision.augment import strong_augment, weak_augment
    from bbam.vision.backbones import load_backbone

    rows = ImageRows(files, size)
    n, out = len(files), {"size": size, "images": len(files)}
    for workers in (0, 1, 2):
        out[f"decode_w{workers}_img_s"] = n / _median_time(lambda: _decode(rows, workers, False), repeats)
    out["decode_views_w2_img_s"] = n / _median_time(lambda: _decode(rows, 2, True), repeats)
    x = rows[list(range(min(n, 64)))].float().div_(255)
    g = torch.Generator().manual_seed(0)
    out["weak_img_s"] = len(x) / _median_time(lambda: weak_augment(x, g), repeats)
    out["strong_img_s"] = len(x) / _median_time(lambda: strong_augment(x, g), repeats)

    backbone = load_backbone("efficientnet_lite0")
    with torch.no_grad():
        t = _median_time(lambda: backbone(x), repeats)
        flops = _flops(lambda: backbone(x))
    out["frozen_img_s"] = len(x) / t
    out["frozen_gflop_per_img"] = flops / len(x) / 1e9
    out["frozen_gflop_s"] = flops / t / 1e9
    # the same network in the default NCHW layout: a copy (the frozen instance is shared)
    nchw = copy.deepcopy(load_backbone("efficientnet_lite0"))
    nchw.net.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        out["frozen_nchw_img_s"] = len(x) / _median_time(lambda: nchw.net(((x - nchw.mean) / nchw.std).contiguous()),
                                                         repeats)

    encoder = PretrainedImageEncoder(0, finetune=True)
    model = MultiLabelModel(encoder, CosineClassifier(encoder.out_dim, 5))
    xb, yb = x[:32], torch.randint(0, 2, (32, 5)).float()
    step = _training_step(model, model, xb, yb)
    model.train()
    t = _median_time(step, repeats)
    # forward + backward = 3 forwards (the backward computes two products per forward one);
    # torch's flop counter is not used here: it counts a grouped (depthwise) convolution's
    # backward as a dense one, some 40 times too many
    out["finetune_step_img_s"] = len(xb) / t
    out["finetune_gflop_per_img"] = 3 * out["frozen_gflop_per_img"]
    out["finetune_gflop_s"] = out["finetune_gflop_per_img"] * len(xb) / t

    # one unlabeled batch of 128: views made from cached features vs from images
    ub = ImageRows(files[:128], size)
    with torch.no_grad():
        feats = torch.cat([backbone(ub[list(range(i, min(i + 64, len(ub))))].float().div_(255))
                           for i in range(0, len(ub), 64)])
    fv = FeatureViews()

    def feature_views():
        fv.weak(feats, g)
        fv.strong(feats, g)

    def image_views():
        pixels = ub[list(range(len(ub)))].float().div_(255)
        with torch.no_grad():
            backbone(weak_augment(pixels, g))
            backbone(strong_augment(pixels, g))

    out["feature_views_batch_s"] = _median_time(feature_views, repeats)
    out["image_views_batch_s"] = _median_time(image_views, max(1, repeats // 2))
    out["image_over_feature_views"] = out["image_views_batch_s"] / out["feature_views_batch_s"]
    return out


def _peak_gflops() -> float:
    """The cores' FP32 peak: cores x clock x FLOP/cycle, 64 with AVX-512 (two 512-bit FMA
    units per core: Zen 5, most Xeons; Zen 4 has half) and 32 with AVX2 (two 256-bit FMA
    units). A guess where the machine does not say more: pass --peak-gflops."""
    info = Path("/proc/cpuinfo").read_text()
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.lower().startswith("cpu mhz")]
    per_cycle = 64 if " avx512f" in info else 32
    return torch.get_num_threads() * (max(mhz) if mhz else 2500.0) * per_cycle / 1000


def measure_runtimes(files: List[str], size: int, repeats: int, peak: float, texts_file: Path,
                     num_texts: int) -> Dict[str, float]:
    """Frozen encoders per runtime (torch, onnx): see the module docstring."""
    import json as _json

    from bbam.data.image_rows import ImageRows
    from bbam.vision.backbones import frozen_image_encoder, load_backbone
    from bbam.vision.features import _decoding_workers, image_features, view_features

    rows = ImageRows(files, size)
    out: Dict[str, float] = {"size": size, "images": len(files), "peak_gflop_s": peak}
    settings = {"name": "efficientnet_lite0", "progress": False, "cache": False, "num_workers": "auto", "device": "cpu"}
    cold = {"torch": [], "onnx": []}
    from bbam.data.cache import default_cache_dir
    from bbam.runtimes import clear_sessions

    clear_sessions()
    t0 = time.perf_counter()  # the export (once per backbone and size, cached on disk) and the session
    frozen_image_encoder("efficientnet_lite0", "onnx", torch.device("cpu"), size, default_cache_dir())
    out["onnx_session_s"] = time.perf_counter() - t0
    for _ in range(max(1, repeats)):  # interleaved: a busy spell hits both
        for runtime in cold:
            t0 = time.perf_counter()
            image_features(rows, {**settings, "runtime": runtime})
            cold[runtime].append(time.perf_counter() - t0)
    x = rows[list(range(min(len(rows), 64)))].float().div_(255)
    with torch.no_grad():
        flops = _flops(lambda: load_backbone("efficientnet_lite0")(x)) / len(x)
    out["gflop_per_img"] = flops / 1e9
    for runtime in cold:
        encode, _ = frozen_image_encoder("efficientnet_lite0", runtime, torch.device("cpu"), size, default_cache_dir())
        with torch.no_grad():
            t = _median_time(lambda: encode(x), repeats)
        out[f"{runtime}_cold_img_s"] = len(rows) / statistics.median(cold[runtime])
        out[f"{runtime}_forward_img_s"] = len(x) / t
        out[f"{runtime}_gflop_s"] = flops * len(x) / t / 1e9
        out[f"{runtime}_peak_fraction"] = out[f"{runtime}_gflop_s"] / peak
    out["onnx_over_torch_cold"] = out["onnx_cold_img_s"] / out["torch_cold_img_s"]
    workers = _decoding_workers("auto", torch.device("cpu"))
    out["decode_workers"] = workers
    out["decode_only_img_s"] = len(rows) / _median_time(lambda: _decode(rows, workers, False), repeats)

    # the view bank: one weak and one strong pass (onnx), the bank of V = 4 + 4 from them
    for kind, recipe in (("weak", {"kind": "weak", "copy": 0, "flip": 0.5, "translate": 0.125}),
                         ("strong", {"kind": "strong", "copy": 0, "flip": 0.5, "translate": 0.125, "num_ops": 2,
                                     "magnitude": 1.0, "cutout": 0.5})):
        t0 = time.perf_counter()
        view_features(rows, {**settings, "runtime": "onnx"}, recipe)
        out[f"bank_{kind}_img_s"] = len(rows) / (time.perf_counter() - t0)
    out["bank_v4_s_per_1000_photos"] = 4 * 1000 * (1 / out["bank_weak_img_s"] + 1 / out["bank_strong_img_s"])

    import importlib.util

    if texts_file.is_file() and importlib.util.find_spec("sentence_transformers") is not None:
        from bbam.data.sentence import default_text_batch, embed_texts

        with open(texts_file) as fh:
            docs = [_json.loads(line) for _, line in zip(range(num_texts), fh)]
        texts = [str(d.get("title", "")) + ". " + str(d.get("body", d.get("text", ""))) for d in docs]
        embed_texts(texts[:8], cache=False, progress=False, runtime="onnx")  # the export, once
        default = default_text_batch(torch.device("cpu"))
        times = {(runtime, batch): [] for batch in (default, 64) for runtime in ("torch", "onnx")}
        for _ in range(max(1, repeats)):
            for runtime, batch in times:
                t0 = time.perf_counter()
                embed_texts(texts, batch_size=batch, cache=False, progress=False, runtime=runtime, device="cpu")
                times[runtime, batch].append(time.perf_counter() - t0)
        out["text_batch"] = default
        for (runtime, batch), ts in times.items():
            suffix = "" if batch == default else f"_b{batch}"
            gflop = _text_gflop(texts, batch)
            out[f"text_{runtime}{suffix}_docs_s"] = len(texts) / statistics.median(ts)
            out[f"text_{runtime}{suffix}_gflop_s"] = gflop / statistics.median(ts)
            out[f"text_{runtime}{suffix}_peak_fraction"] = out[f"text_{runtime}{suffix}_gflop_s"] / peak
        out["text_onnx_over_torch"] = out["text_onnx_docs_s"] / out["text_torch_docs_s"]
        out["text_onnx_over_torch_b64"] = out["text_onnx_b64_docs_s"] / out["text_torch_b64_docs_s"]
    return out


def _text_gflop(texts: List[str], batch: int) -> float:
    """GFLOP of embedding ``texts`` in batches of ``batch`` (sorted by length, as
    :func:`bbam.data.sentence.embed_texts` does; padded to each batch's longest): per layer
    and token ``2 (4 H^2 + 2 H I)`` for the projections and the feed-forward, and
    ``4 t H`` for the attention's scores and sums over ``t`` tokens."""
    from bbam.data.sentence import DEFAULT_MODEL, load_sentence_model

    model = load_sentence_model(DEFAULT_MODEL, "cpu")
    config = model[0].auto_model.config
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    total = 0.0
    for i in range(0, len(texts), batch):
        chunk = [texts[j] for j in order[i:i + batch]]
        b, t = (model.preprocess(chunk) if hasattr(model, "preprocess") else model.tokenize(chunk))["input_ids"].shape
        total += layers * b * t * (2 * (4 * hidden * hidden + 2 * hidden * inner) + 4 * t * hidden)
    return total / 1e9


def measure_compile(files: List[str], size: int, repeats: int) -> Dict[str, float]:
    """A fine-tuning step (batch 16, ``size`` px) eager and under ``torch.compile`` (inductor,
    random numbers as eager's), steps/s after the compiled step's warm-up."""
    from bbam.app.image_models import PretrainedImageEncoder
    from bbam.app.runtime import compiled_for_training
    from bbam.app.models import CosineClassifier, MultiLabelModel
    from bbam.data.image_rows import ImageRows

    rows = ImageRows(files[:16], size)
    xb, yb = rows[list(range(16))].float().div_(255), torch.randint(0, 2, (16, 5)).float()
    out: Dict[str, float] = {"size": size, "batch": 16}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        encoder = PretrainedImageEncoder(0, finetune=True)
        model = MultiLabelModel(encoder, CosineClassifier(encoder.out_dim, 5)).train()
        step = _training_step(compiled_for_training(model) if name == "compiled" else model, model, xb, yb)

        t0 = time.perf_counter()
        out[f"{name}_first_loss"] = step()
        out[f"{name}_first_step_s"] = time.perf_counter() - t0
        out[f"{name}_step_img_s"] = 16 / _median_time(step, repeats)
    out["compiled_over_eager"] = out["compiled_step_img_s"] / out["eager_step_img_s"]
    return out


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: that survives the
    ``exec`` of a spawned child and would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stream(files: List[str], n: int, size: int, queue) -> None:
    """Child: stream ``n`` rows (``files`` repeated) through 2 decoding workers; peak RSS."""
    from bbam.vision.features import image_loader
    from bbam.data.image_rows import ImageRows

    rows = ImageRows([files[i % len(files)] for i in range(n)], size)
    total = 0.0
    t0 = time.perf_counter()
    for pixels in image_loader(rows, 64, 2):
        total += float(pixels[:, 0, 0, 0].float().sum())  # consume the batch
    wall = time.perf_counter() - t0
    own = _peak_rss_mib()
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    queue.put({"rows": n, "size": size, "peak_rss_mib": own, "worker_peak_rss_mib": workers,
               "img_s": n / wall, "whole_set_tensor_mib": n * 3 * size * size * 4 / 2**20})


def measure_rss(files: List[str], sizes: List[int], size: int) -> List[Dict[str, float]]:
    ctx = mp.get_context("spawn")  # a fresh interpreter per size: its peak is its own
    out = []
    for n in sizes:
        queue = ctx.Queue()
        proc = ctx.Process(target=_stream, args=(files, n, size, queue))
        proc.start()
        out.append(queue.get())
        proc.join()
    return out


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "miml"))
    p.add_argument("--sizes", default="128,224")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rss-sizes", default="2000,8000")
    p.add_argument("--json", default=None)
    p.add_argument("--runtimes", action="store_true", help="only the runtimes and the bank")
    p.add_argument("--compile", action="store_true", help="with --runtimes: also train.compile's fine-tuning step")
    p.add_argument("--peak-gflops", type=float, default=None, help="the cores' FP32 peak (default: a guess)")
    p.add_argument("--texts", default=str(ROOT.parent / "shared" / "data" / "reuters21578" / "reuters21578_texts.jsonl"))
    p.add_argument("--num-texts", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="smoke test: 64 images, one size, 1 repeat, small RSS sets")
    ns = p.parse_args(argv)
    if ns.quick:
        ns.sizes, ns.images, ns.repeats, ns.rss_sizes, ns.num_texts = "64", 64, 1, "64,128", 16
    root = Path(ns.root)
    if not (root / "labels.tsv").is_file():
        raise SystemExit(f"bench/images.py: no labels.tsv in --root {root}")
    files = _files(root, max(ns.images, 128))
    result = {"threads": torch.get_num_threads(), "sizes": [], "rss": [], "runtimes": []}
    if ns.runtimes:
        peak = ns.peak_gflops or _peak_gflops()
        for size in map(int, ns.sizes.split(",")):
            r = measure_runtimes(files[:ns.images], size, ns.repeats, peak, Path(ns.texts), ns.num_texts)
            result["runtimes"].append(r)
            print(f"{size} px, {len(files[:ns.images])} photos: cold features torch {r['torch_cold_img_s']:.1f}, onnx "
                  f"{r['onnx_cold_img_s']:.1f} img/s (x{r['onnx_over_torch_cold']:.2f}); decode alone "
                  f"{r['decode_only_img_s']:.0f} img/s; forward torch {r['torch_forward_img_s']:.1f} img/s "
                  f"({r['torch_gflop_s']:.0f} GFLOP/s, {100 * r['torch_peak_fraction']:.0f} % of {peak:.0f}), onnx "
                  f"{r['onnx_forward_img_s']:.1f} img/s ({r['onnx_gflop_s']:.0f} GFLOP/s, "
                  f"{100 * r['onnx_peak_fraction']:.0f} %); bank passes weak {r['bank_weak_img_s']:.0f}, strong "
                  f"{r['bank_strong_img_s']:.0f} img/s (V=4: {r['bank_v4_s_per_1000_photos']:.0f} s per 1000 photos)"
                  + (f"; texts (batches of {r['text_batch']}) torch {r['text_torch_docs_s']:.1f} docs/s "
                     f"({r['text_torch_gflop_s']:.0f} GFLOP/s, {100 * r['text_torch_peak_fraction']:.0f} %), onnx "
                     f"{r['text_onnx_docs_s']:.1f} docs/s ({r['text_onnx_gflop_s']:.0f} GFLOP/s, "
                     f"{100 * r['text_onnx_peak_fraction']:.0f} %; x{r['text_onnx_over_torch']:.2f}); batches of 64: "
                     f"torch {r['text_torch_b64_docs_s']:.1f}, onnx {r['text_onnx_b64_docs_s']:.1f} docs/s "
                     f"(x{r['text_onnx_over_torch_b64']:.2f})" if "text_torch_docs_s" in r else ""), flush=True)
        c = measure_compile(files, 128 if not ns.quick else 64, ns.repeats) if ns.compile else None
        result["compile"] = c
        if c is not None:
            print(f"fine-tuning step at {c['size']} px, batch 16: eager {c['eager_step_img_s']:.1f}, compiled "
                  f"{c['compiled_step_img_s']:.1f} img/s (x{c['compiled_over_eager']:.2f}; first compiled step "
                  f"{c['compiled_first_step_s']:.0f} s; first losses {c['eager_first_loss']:.6f} / "
                  f"{c['compiled_first_loss']:.6f})", flush=True)
        if ns.json:
            Path(ns.json).write_text(json.dumps(result, indent=1))
        return result
    for size in map(int, ns.sizes.split(",")):
        r = measure_size(files[:ns.images], size, ns.repeats)
        result["sizes"].append(r)
        print(f"{size} px: decode {r['decode_w0_img_s']:.0f} / {r['decode_w1_img_s']:.0f} / "
              f"{r['decode_w2_img_s']:.0f} img/s (0/1/2 workers), + views {r['decode_views_w2_img_s']:.0f}; "
              f"weak {r['weak_img_s']:.0f}, strong {r['strong_img_s']:.0f} img/s; frozen "
              f"{r['frozen_img_s']:.1f} img/s (NCHW {r['frozen_nchw_img_s']:.1f}; {r['frozen_gflop_per_img']:.2f} GFLOP/img, "
              f"{r['frozen_gflop_s']:.1f} GFLOP/s); fine-tuning step {r['finetune_step_img_s']:.1f} img/s "
              f"({r['finetune_gflop_s']:.1f} GFLOP/s); views of 128: features {r['feature_views_batch_s'] * 1e3:.2f} ms, "
              f"images {r['image_views_batch_s']:.2f} s ({r['image_over_feature_views']:.0f}x)", flush=True)
    rss_size = int(ns.sizes.split(",")[0])
    result["rss"] = measure_rss(files, [int(n) for n in ns.rss_sizes.split(",")], rss_size)
    for r in result["rss"]:
        print(f"stream {r['rows']} images at {r['size']} px: peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(workers {r['worker_peak_rss_mib']:.0f} MiB), {r['img_s']:.0f} img/s; a whole-set pixel tensor "
              f"would be {r['whole_set_tensor_mib']:.0f} MiB", flush=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
