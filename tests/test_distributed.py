"""Multi-process (gloo, CPU) runs give the single-process statistics, thresholds and masks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bbam
from bbam import distributed as D
from bbam.cap import CAPLabeler
from bbam.sampling import NegativeSampler

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

FAST = ["data.num_samples=500", "data.num_labels=6", "data.num_features=16", "model.encoder.hidden=[32]",
        "model.encoder.out_dim=16", "model.encoder.dropout=0", "train.epochs=5", "train.warmup_epochs=2",
        "train.batch_size=32", "train.unlabeled_batch_size=64", "train.progress=false", "train.save_epoch_state=true"]


def _data():
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(301, 12, generator=g, dtype=torch.float64)
    targets = torch.randint(-1, 2, (301, 9), generator=g, dtype=torch.int8)
    scores = torch.rand(301, 9, generator=g, dtype=torch.float64)
    return feats, targets, scores


def _single_process():
    feats, targets, scores = _data()
    protos, counts = bbam.label_prototypes(feats, targets)
    stats = bbam.ops.label_angle_stats(feats, protos, targets)
    cap = CAPLabeler().fit(targets)
    thresholds = cap.thresholds(scores)
    mask = NegativeSampler(eta=2.0, backend="exact").select(feats, protos, targets)
    return {"protos": protos, "counts": counts, "stats": torch.stack(stats), "thresholds": thresholds, "mask": mask}


def _worker(rank: int, world: int, init_file: str, out_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        feats, targets, scores = _data()
        rows = D.shard_indices(feats.shape[0])  # this rank's shard
        f, t, s = feats[rows], targets[rows], scores[rows]
        protos, counts = D.global_prototypes(f, t)
        stats = D.global_label_angle_stats(f, protos, t)
        # CAP: positive rates and thresholds from the gathered (global) quantities
        cap = CAPLabeler().fit(torch.cat(D.gather_rows(t)))
        thresholds = cap.thresholds(torch.cat(D.gather_rows(s)))
        all_rows = torch.cat(D.gather_rows(rows))
        keep = NegativeSampler(eta=2.0, backend="exact").select(torch.cat(D.gather_rows(f)), protos,
                                                                 torch.cat(D.gather_rows(t)))
        mask = torch.empty_like(keep)
        mask[all_rows] = keep
        torch.save({"protos": protos, "counts": counts, "stats": torch.stack(stats), "thresholds": thresholds,
                    "mask": mask}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_global_quantities_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    expected = _single_process()
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        for key, value in expected.items():
            if value.dtype == torch.bool:
                assert torch.equal(got[key], value), key
            else:
                torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-6, msg=key)


def _run(out_dir: Path, *overrides, world: int = 1, check=True, base=FAST):
    args = [*base, f"hydra.run.dir={out_dir}", *overrides]  # out_dir follows the Hydra run folder
    if world == 1:
        cmd = [sys.executable, "-m", "bbam.train", *args]
    else:
        # --standalone: torchrun binds a free port itself (no window in which another
        # process can take a port chosen beforehand)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "bbam.train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:  # show why: the child's own traceback, not only its exit code
        raise AssertionError(f"{' '.join(cmd)}\nexited {proc.returncode}; stderr (last 4000 chars):\n{proc.stderr[-4000:]}")
    return proc


def test_two_process_run_equals_one_process(tmp_path):
    _run(tmp_path / "one")
    _run(tmp_path / "two", world=2)
    a = torch.load(tmp_path / "one" / "epoch_state.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "epoch_state.pt", weights_only=True)
    for key in a:
        if a[key].dtype in (torch.bool, torch.int8, torch.int64):
            assert torch.equal(a[key], b[key]), key
        else:  # after 5 epochs of training: only reduction-order rounding separates the runs
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=key)
    m1 = json.loads((tmp_path / "one" / "final_metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    assert m2["world_size"] == 2 and m1["world_size"] == 1
    for key, value in m1["test"].items():
        assert m2["test"][key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
    assert not (tmp_path / "two" / "checkpoints" / ".last.pt.tmp").exists()
    h1 = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    h2 = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for r1, r2 in zip(h1, h2):  # the logged loss is the global batches' loss, not one rank's part
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-3), r1["epoch"]


def test_two_process_resume(tmp_path):
    full = _run(tmp_path / "full", world=2)
    _run(tmp_path / "part", "train.stop_after_epoch=2", world=2)
    assert not (tmp_path / "part" / "final_metrics.json").exists()
    _run(tmp_path / "resumed", f"train.resume={tmp_path / 'part' / 'checkpoints' / 'last.pt'}", world=2)
    m_full = json.loads((tmp_path / "full" / "final_metrics.json").read_text())["test"]
    m_res = json.loads((tmp_path / "resumed" / "final_metrics.json").read_text())["test"]
    for key, value in m_full.items():
        assert m_res[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert full.returncode == 0


DROPOUT_ON = [a for a in FAST if not a.startswith("model.encoder.dropout")]  # the config's dropout (0.5)


def test_with_dropout_global_quantities_on_the_same_weights_equal_single_process(tmp_path):
    """The README's claim with dropout on: from the same weights (one checkpoint, resumed
    with 1 and with 2 processes), every global quantity of the epoch -- CAP thresholds and
    pseudo-labels, prototypes and angle statistics, negative-sampling masks -- is the
    single-process one; the training steps then differ, by the dropout masks each rank draws."""
    _run(tmp_path / "part", "train.stop_after_epoch=1", base=DROPOUT_ON)  # after the 2 warm-up epochs
    last = tmp_path / "part" / "checkpoints" / "last.pt"
    for world in (1, 2):
        # the checkpoint alone: every setting, dropout included, comes from the run
        _run(tmp_path / f"world{world}", f"train.resume={last}", "train.stop_after_epoch=2", world=world, base=())
    a = torch.load(tmp_path / "world1" / "epoch_state.pt", weights_only=True)
    b = torch.load(tmp_path / "world2" / "epoch_state.pt", weights_only=True)
    assert "dropout: 0.5" in (tmp_path / "world2" / "config.yaml").read_text()
    assert a.keys() == b.keys() and {"targets_ub", "weight_lb", "weight_ub", "thresholds"} <= set(a)
    for key in a:
        if a[key].dtype in (torch.bool, torch.int8, torch.int64):
            assert torch.equal(a[key], b[key]), key
        else:  # reduction order only
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    w1 = torch.load(tmp_path / "world1" / "checkpoints" / "last.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "world2" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert any(not torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5) for k in w1)  # dropout: other draws


# views off: a rank draws its own views (keyed by rank), so with them the weights, and the
# graph on model features, would differ with the number of ranks for another reason
@pytest.mark.parametrize("overrides", [("method=cap", "method.pseudo_labels=graph", "graph.features=inputs",
                                        "method.unlabeled_views=[]"),
                                       ("method=cap", "method.pseudo_labels=blend", "graph.k=10",
                                        "method.unlabeled_views=[]"),
                                       ("method=cap", "method.pseudo_labels=auto", "graph.k=10",
                                        "method.unlabeled_views=[]")],
                         ids=["graph-on-inputs", "blend-on-model-features", "auto-on-model-features"])
def test_two_process_graph_pseudo_labels_equal_one_process(tmp_path, overrides):
    """The kNN graph is built on the features gathered from every rank (rank 0 solves and
    broadcasts): the ranks hold the single process's pseudo-labels."""
    _run(tmp_path / "one", *overrides)
    _run(tmp_path / "two", *overrides, world=2)
    a = torch.load(tmp_path / "one" / "epoch_state.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "epoch_state.pt", weights_only=True)
    assert torch.equal(a["targets_ub"], b["targets_ub"])
    torch.testing.assert_close(b["thresholds"], a["thresholds"], rtol=1e-5, atol=1e-5)
    h = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert any("graph" in r["phase_s"] for r in h)
