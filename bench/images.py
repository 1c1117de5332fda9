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
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    xb, yb = x[:32], torch.randint(0, 2, (32, 5)).float()

    def step():
        _, out_ = model(xb)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(20 * out_, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

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
    p.add_argument("--quick", action="store_true", help="smoke test: 64 images, one size, 1 repeat, small RSS sets")
    ns = p.parse_args(argv)
    if ns.quick:
        ns.sizes, ns.images, ns.repeats, ns.rss_sizes = "64", 64, 1, "64,128"
    root = Path(ns.root)
    if not (root / "labels.tsv").is_file():
        raise SystemExit(f"bench/images.py: no labels.tsv in --root {root}")
    files = _files(root, max(ns.images, 128))
    result = {"threads": torch.get_num_threads(), "sizes": [], "rss": []}
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
