"""What makes unlabeled rows pay: graph pseudo-labels (cap / bam / bbam ``pseudo_labels``,
``labelprop``), the EMA teacher, FreeMatch's thresholds, the normalised unlabeled loss and
the validation probe of ``train.scaling=auto`` / ``model=auto``; each by hand on small
cases, and end to end with resume to the identical result."""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bbam.app.batches import Batch
from bbam.app.methods import CAP, BBAM, FixMatch, FreeMatch, GraphLabels, LabelProp, build_method
from bbam.app.methods.base import MethodContext
from bbam.graph import knn_graph, spread_scores
from bbam.losses import BCELoss
from bbam.metrics import mean_average_precision
from bbam.train import compose_config, train

SMALL = ["data.num_samples=400", "model.encoder.hidden=[32]", "model.encoder.out_dim=16", "train.epochs=5",
         "train.warmup_epochs=2", "train.min_steps_per_epoch=3", "train.progress=false"]


def _clusters(n_per=20, seed=0):
    """Two well-separated clusters in 4-D; label 0 = cluster A, label 1 = cluster B."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_per, 4, generator=g) * 0.1 + torch.tensor([3.0, 0, 0, 0])
    b = torch.randn(n_per, 4, generator=g) * 0.1 + torch.tensor([0, 3.0, 0, 0])
    x = torch.cat([a, b])
    y = torch.zeros(2 * n_per, 2, dtype=torch.int8)
    y[:n_per, 0] = 1
    y[n_per:, 1] = 1
    return x, y


def _context(splits, scores=None, outputs=None, features=None, input_features=True) -> MethodContext:
    def no_model(*args, **kwargs):
        raise AssertionError("this test's context has no model")

    def scores_global(x, label_major=False, source="ema"):
        s = scores[source] if isinstance(scores, dict) else scores
        return s.T.contiguous().T.clone() if label_major else s.clone()

    return MethodContext(splits=splits, device=torch.device("cpu"), world=1, seed=0, epoch=0, feature_dim=4,
                         save_epoch_state=True, scores_global=no_model if scores is None else scores_global,
                         features=features or no_model, outputs=outputs or no_model, classifier_weight=no_model,
                         input_features=input_features)


def _splits(x, y, labeled_rows):
    lb = torch.zeros(len(x), dtype=torch.bool)
    lb[labeled_rows] = True
    return {"labeled": types.SimpleNamespace(x=x[lb], y=y[lb]),
            "unlabeled": types.SimpleNamespace(x=x[~lb], y=y[~lb])}


# ----------------------------------------------------------------------------- graph
def test_balanced_spreading_keeps_each_labels_ranking_and_centres_the_neutral_row():
    x, y = _clusters()
    W = knn_graph(x, k=5)
    labeled = np.zeros(len(x), dtype=bool)
    labeled[[0, 1, 2, 20]] = True  # label 0: 3 positives, 1 negative -- unbalanced seeds
    plain, _ = spread_scores(W, y.numpy(), labeled)
    balanced, certainty = spread_scores(W, y.numpy(), labeled, balance=True)
    for k in range(2):  # each label's order of the rows is the same (rows sorted by one are sorted by the other)
        order = np.argsort(plain[:, k], kind="stable")
        assert (np.diff(balanced[order, k]) >= -1e-12).all()
    assert (balanced[:20, 0] > 0.5).all() and (balanced[20:, 0] < 0.5).all()
    np.testing.assert_allclose(certainty, np.abs(2 * balanced - 1))


def test_graph_labels_on_inputs_pseudo_label_the_clusters_and_are_built_once():
    x, y = _clusters()
    splits = _splits(x, y, [0, 1, 20, 21])
    graph = GraphLabels(k=5, features="inputs")
    ctx = _context(splits)
    calls = []
    ctx_timed = MethodContext(**{**ctx.__dict__, "timed": lambda phase: calls.append(phase) or _null()})
    scores, certainty = graph.spread(ctx_timed)
    assert scores.shape == (36, 2) and scores.stride() == (1, 36)  # label-major, as CAP reads it
    truth = splits["unlabeled"].y
    assert torch.equal((scores > 0.5).to(torch.int8), truth)
    assert (certainty > 0).all()
    again = graph.spread(ctx_timed)
    assert again[0] is scores and calls.count("graph") == 1  # inputs never change: solved once


def _null():
    import contextlib

    return contextlib.nullcontext()


def test_graph_on_inputs_refuses_tokens_or_pixels():
    x, y = _clusters()
    with pytest.raises(ValueError, match="method.graph.features"):
        GraphLabels(k=5, features="inputs").spread(_context(_splits(x, y, [0, 20]), input_features=False))
    with pytest.raises(ValueError, match="method.graph.k"):
        GraphLabels(k=0)
    with pytest.raises(ValueError, match="method.graph.alpha"):
        GraphLabels(alpha=1.0)


def test_graph_on_model_features_reads_the_teachers_features():
    x, y = _clusters()
    splits = _splits(x, y, [0, 1, 20, 21])
    seen = []

    def features(rows, source, out=None):
        seen.append(source)
        return rows * 2.0  # any map that keeps the clusters

    scores, _ = GraphLabels(k=5).spread(_context(splits, features=features), source="online")
    assert seen == ["online", "online"] and torch.equal((scores > 0.5).to(torch.int8), splits["unlabeled"].y)


@pytest.mark.parametrize("source", ["graph", "blend"])
def test_cap_pseudo_labels_from_the_graph_or_the_blend(source):
    x, y = _clusters()
    splits = _splits(x, y, [0, 1, 20, 21])
    model_scores = torch.rand(36, 2, generator=torch.Generator().manual_seed(1))
    m = CAP(pseudo_labels=source, graph=GraphLabels(k=5, features="inputs"), neg_per=0.5)
    m.bind(_context(splits))
    m.refresh(_context(splits, model_scores))
    spread, _ = GraphLabels(k=5, features="inputs").spread(_context(splits))
    expected_scores = spread if source == "graph" else (model_scores + spread) / 2
    expected = m.cap.pseudo_targets(expected_scores.T.contiguous().T)
    assert torch.equal(m.targets_ub, expected)
    if source == "graph":  # the graph alone recovers every confident positive
        pos = m.targets_ub == 1
        assert torch.equal(splits["unlabeled"].y[pos], torch.ones(int(pos.sum()), dtype=torch.int8))


def _with_val(splits, x_val, y_val):
    return {**splits, "val": types.SimpleNamespace(x=x_val, y=y_val)}


@pytest.mark.parametrize("model_is_good", [True, False])
def test_auto_takes_the_source_that_ranks_the_validation_rows_best(model_is_good):
    """``pseudo_labels: auto``: the teacher's, the blended or the graph's scores, whichever
    has the best validation mAP; the validation rows join the graph unlabeled, and their
    labels choose but never seed."""
    x, y = _clusters()
    xv, yv = _clusters(n_per=5, seed=3)
    splits = _with_val(_splits(x, y, [0, 1, 20, 21]), xv, yv)
    # a teacher that ranks every row right (its scores are the truth), or every row wrong
    truth_u, truth_v = splits["unlabeled"].y.float(), yv.float()
    model_u, model_v = (truth_u, truth_v) if model_is_good else (1 - truth_u, 1 - truth_v)
    calls = []

    def scores_global(rows, label_major=False, source="ema"):
        calls.append(len(rows))
        s = model_u if len(rows) == 36 else model_v
        return s.T.contiguous().T.clone() if label_major else s.clone()

    ctx = _context(splits)
    ctx = MethodContext(**{**ctx.__dict__, "scores_global": scores_global})
    graph = GraphLabels(k=5, features="inputs")
    m = CAP(pseudo_labels="auto", graph=graph, neg_per=0.5)
    m.bind(ctx)
    log = m.refresh(ctx)
    graph_u, _, graph_v = GraphLabels(k=5, features="inputs").spread(ctx, also=("val",))
    mAPs = [mean_average_precision(v, yv) for v in (model_v, (model_v + graph_v) / 2, graph_v)]
    assert [log["source_val_mAP_model"], log["source_val_mAP_blend"], log["source_val_mAP_graph"]] == mAPs
    # a perfect teacher ties the blend (the teacher wins ties); against a wrong one the blend is
    # flat (0.5 everywhere) and the graph, which separates the clusters, wins
    chosen = 0 if model_is_good else 2
    assert log["pseudo_source"] == chosen and mAPs[chosen] == max(mAPs)
    expected_scores = truth_u if chosen == 0 else graph_u
    assert torch.equal(m.targets_ub, m.cap.pseudo_targets(expected_scores.T.contiguous().T))
    assert calls == [36, 10]  # the teacher's scores of the unlabeled and the validation rows


def test_auto_scores_the_validation_rows_in_the_graph_without_their_labels():
    """Changing the validation labels changes the choice's scores, never the graph's."""
    x, y = _clusters()
    xv, yv = _clusters(n_per=5, seed=3)
    base = _splits(x, y, [0, 1, 20, 21])
    a = GraphLabels(k=5).spread(_context(_with_val(base, xv, yv), features=lambda r, s, out=None: r), also=("val",))
    b = GraphLabels(k=5).spread(_context(_with_val(base, xv, 1 - yv), features=lambda r, s, out=None: r),
                                also=("val",))
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and a[2].shape == (10, 2)
    plain = GraphLabels(k=5).spread(_context(base, features=lambda r, s, out=None: r))
    assert len(plain) == 2 and plain[0].shape == (36, 2)


def test_labelprop_is_bce_on_graph_pseudo_labels_weighted_by_certainty():
    x, y = _clusters()
    splits = _splits(x, y, [0, 1, 20, 21])
    m = LabelProp(graph=GraphLabels(k=5, features="inputs"))
    m.bind(_context(splits))
    m.refresh(_context(splits))
    _, certainty = GraphLabels(k=5, features="inputs").spread(_context(splits))
    torch.testing.assert_close(m.weight_ub, (m.targets_ub >= 0) * certainty)
    out_l, out_u = torch.randn(2, 2), torch.randn(3, 2)
    lb = Batch(torch.tensor([0, 2]), splits["labeled"].x[[0, 2]], splits["labeled"].y[[0, 2]])
    ub = Batch(torch.tensor([0, 5, 30]), splits["unlabeled"].x[[0, 5, 30]], splits["unlabeled"].y[[0, 5, 30]])
    loss = m.loss(lambda xs: [out_l, out_u], lb, ub)
    bce = BCELoss(reduction="sum")
    expected = bce(out_l, lb.y, None) + bce(out_u, m.targets_ub[ub.idx], m.weight_ub[ub.idx])
    torch.testing.assert_close(loss, expected)


def test_pseudo_label_options_are_checked():
    with pytest.raises(ValueError, match="method.pseudo_labels"):
        CAP(pseudo_labels="oracle")
    with pytest.raises(ValueError, match="method.teacher"):
        CAP(teacher="student")
    with pytest.raises(ValueError, match="method.graph"):
        BBAM(pseudo_labels="blend", graph=None)
    with pytest.raises(ValueError, match="method.unlabeled_norm"):
        FixMatch(unlabeled_norm="mean")


def test_cap_teacher_model_reads_the_live_models_scores():
    x, y = _clusters()
    splits = _splits(x, y, [0, 1, 20, 21])
    ema, online = torch.zeros(36, 2), torch.ones(36, 2)
    ema[:, 0] = torch.linspace(0, 1, 36)
    online[:, 0] = torch.linspace(1, 0, 36)
    picked = {}
    for teacher in ("ema", "model"):
        m = CAP(teacher=teacher, neg_per=0.5)
        m.bind(_context(splits))
        m.refresh(_context(splits, {"ema": ema, "model": online, "online": online}))
        picked[teacher] = m.targets_ub[:, 0].clone()
    assert picked["ema"][-1] == 1 and picked["model"][0] == 1 and not torch.equal(picked["ema"], picked["model"])


# ----------------------------------------------------------------------------- consistency
def test_fixmatch_with_an_ema_teacher_labels_the_weak_view_by_the_ema_outputs():
    m = FixMatch(threshold=0.9, teacher="ema")
    lb_y, ub_y = torch.zeros(1, 2, dtype=torch.int8), torch.zeros(2, 2, dtype=torch.int8)
    asked = []

    def outputs(x, source):
        asked.append(source)
        return torch.tensor([[5.0, -5.0], [0.0, 0.0]])

    splits = {"labeled": types.SimpleNamespace(y=lb_y, x=torch.zeros(1, 1)),
              "unlabeled": types.SimpleNamespace(y=ub_y, x=torch.zeros(2, 1))}
    m.bind(_context(splits))
    m.refresh(_context(splits, outputs=outputs))
    w, s, x_l = torch.zeros(2, 1), torch.ones(2, 1), torch.zeros(1, 1)
    lb = Batch(torch.tensor([0]), x_l, lb_y)
    ub = Batch(torch.tensor([0, 1]), torch.zeros(2, 1), views={"weak": w, "strong": s})
    strong = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    forwarded = []

    def forward(xs):
        forwarded.append([id(t) for t in xs])
        return [torch.zeros(1, 2), strong]

    loss = m.loss(forward, lb, ub)
    assert asked == ["ema"] and forwarded == [[id(x_l), id(s)]]  # the live model never sees the weak view
    bce = BCELoss(reduction="sum")
    pseudo = torch.tensor([[1, 0], [0, 0]], dtype=torch.int8)
    weight = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    expected = bce(torch.zeros(1, 2), lb_y, None) + bce(strong, pseudo, weight)
    torch.testing.assert_close(loss, expected)


def test_unlabeled_norm_labels_divides_the_unlabeled_term_by_the_number_of_labels():
    lb_y, ub_y = torch.zeros(1, 4, dtype=torch.int8), torch.zeros(2, 4, dtype=torch.int8)
    splits = {"labeled": types.SimpleNamespace(y=lb_y, x=torch.zeros(1, 1)),
              "unlabeled": types.SimpleNamespace(y=ub_y, x=torch.zeros(2, 1))}
    out_l, out_w, out_s = torch.randn(1, 4), torch.full((2, 4), 6.0), torch.randn(2, 4)
    lb = Batch(torch.tensor([0]), torch.zeros(1, 1), lb_y)
    ub = Batch(torch.tensor([0, 1]), torch.zeros(2, 1), views={"weak": torch.zeros(2, 1), "strong": torch.ones(2, 1)})
    losses = {}
    for norm in ("sum", "labels"):
        m = FixMatch(unlabeled_norm=norm)
        m.bind(_context(splits))
        m.refresh(_context(splits))
        losses[norm] = m.loss(lambda xs: [out_l, out_w, out_s], lb, ub)
    bce = BCELoss(reduction="sum")
    labeled = bce(out_l, lb_y, None)
    torch.testing.assert_close(losses["labels"] - labeled, (losses["sum"] - labeled) / 4)


def test_freematch_thresholds_by_hand():
    m = FreeMatch(momentum=0.5)
    splits = {"labeled": types.SimpleNamespace(y=torch.zeros(1, 2, dtype=torch.int8), x=torch.zeros(1, 1)),
              "unlabeled": types.SimpleNamespace(y=torch.zeros(3, 2, dtype=torch.int8), x=torch.zeros(3, 1))}
    m.bind(_context(splits))
    p = torch.tensor([[0.9, 0.1], [0.6, 0.05], [0.2, 0.3]])
    weight = m.unlabeled_weight(p)
    conf = torch.maximum(p, 1 - p).double()
    tau = 0.5 * 0.5 + 0.5 * float(conf.mean())
    m_k = 0.5 * 0.5 + 0.5 * p.double().mean(0)
    q = torch.stack([m_k, 1 - m_k])
    thr = tau * q / q.max(0).values  # [2, K]: pseudo-positive, pseudo-negative
    assert float(m.tau) == pytest.approx(tau)
    torch.testing.assert_close(m.p_mean, m_k)
    expected = (conf >= torch.where(p >= 0.5, thr[0], thr[1])).float()
    assert torch.equal(weight, expected)
    # a label whose mean probability is low lets its positives pass below tau
    assert float(thr[0, 1]) < tau and float(thr[1, 1]) == pytest.approx(tau)
    fresh = FreeMatch(momentum=0.5)
    fresh.bind(_context(splits))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.tau, m.tau) and torch.equal(fresh.p_mean, m.p_mean)


# ----------------------------------------------------------------------------- end to end
def _run(tmp_path: Path, name: str, *overrides: str):
    base = SMALL if "data=npz" not in overrides else [o for o in SMALL if not o.startswith(("data.", "model."))]
    cfg = compose_config(base + list(overrides))
    cfg.out_dir = str(tmp_path / name)
    return cfg, train(cfg)


@pytest.mark.parametrize("overrides", [
    ("method=labelprop",),
    ("method=freematch", "method.teacher=ema"),
    ("method=cap", "method.pseudo_labels=blend", "method.teacher=model", "method.weight_by_certainty=true"),
    ("method=bbam", "method.pseudo_labels=graph", "graph.k=10"),
    ("method=cap", "method.pseudo_labels=auto", "graph.k=10"),
], ids=["labelprop", "freematch-ema", "cap-blend-model", "bbam-graph", "cap-auto"])
def test_new_options_resume_to_the_uninterrupted_result(tmp_path, overrides):
    _, full = _run(tmp_path, "full", *overrides)
    cfg, stopped = _run(tmp_path, "stopped", *overrides, "train.stop_after_epoch=2")
    assert stopped["interrupted"]
    _, resumed = _run(tmp_path, "resumed", *overrides, f"train.resume={cfg.out_dir}/checkpoints/last.pt")
    assert resumed["test"] == full["test"]
    history = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    st = [r for r in history if r["phase"] == "self_training"]
    assert st and all("pseudo_confident" in r for r in st)
    if any(word in " ".join(overrides) for word in ("graph", "labelprop", "blend", "auto")):
        assert "graph" in st[0]["phase_s"]
    if "method.pseudo_labels=auto" in overrides:  # the choice and what made it are logged every epoch
        assert all(r["pseudo_source"] in (0.0, 1.0, 2.0) and "source_val_mAP_graph" in r for r in st)


def test_every_method_config_builds_with_its_graph_section():
    for name in ("cap", "bam", "bbam", "bbam_cls", "labelprop"):
        cfg = compose_config([f"method={name}", "method.pseudo_labels=blend"])
        method = build_method(cfg.method, resolved={"margin": 0.4, "scale": 20.0})
        assert isinstance(method.graph, GraphLabels) and method.pseudo_labels == "blend"
    assert build_method(compose_config(["method=labelprop"]).method).graph.features == "model"


# ----------------------------------------------------------------------------- validation probe
@pytest.fixture()
def indicator_file(tmp_path):
    """A file of 0/1 indicator features: both scalings are candidates."""
    g = np.random.default_rng(0)
    n, d, k = 300, 40, 4
    w = g.normal(size=(d, k))
    x = (g.random((n, d)) < 0.2).astype(np.float32)
    y = ((x @ w + g.normal(scale=0.5, size=(n, k))) > 0.5).astype(np.int8)
    path = tmp_path / "ind.npz"
    np.savez(path, X=x, Y=y)
    return path


def test_auto_scaling_and_model_are_chosen_on_validation_and_recorded(tmp_path, indicator_file):
    cfg, result = _run(tmp_path, "auto", "data=npz", f"data.path={indicator_file}", "method=supervised",
                       "train.probe_epochs=2")
    plan = json.loads((tmp_path / "auto" / "plan.json").read_text())
    probe = plan["scaling"]["probe"]
    tried = {(c["scaling"], c["model"]) for c in probe["candidates"]}
    assert tried == {("standardize", "mlp"), ("tfidf_l2", "mlp"), ("standardize", "linear"), ("tfidf_l2", "linear")}
    best = max(probe["candidates"], key=lambda c: c["val_mAP"])
    assert (plan["scaling"]["scaling"], probe["model"]) == (best["scaling"], best["model"])
    assert "best validation mAP" in (tmp_path / "auto" / "report.md").read_text()
    # the probe's runs are the run's own model: a given candidate trained alone scores the same
    _, alone = _run(tmp_path, "alone", "data=npz", f"data.path={indicator_file}", "method=supervised",
                    f"model={best['model']}", f"train.scaling={best['scaling']}", "train.epochs=2",
                    "train.warmup_epochs=0", "train.patience=2")
    assert alone["best_val_mAP"] == pytest.approx(best["val_mAP"], abs=1e-9)
    # the predictor builds the chosen model
    from bbam.app.predict import Predictor

    pred = Predictor.from_run(tmp_path / "auto")
    assert pred.predict_proba(np.zeros((2, 40), dtype=np.float32)).shape == (2, 4)


def test_a_probed_run_resumes_with_its_choice_without_probing_again(tmp_path, indicator_file):
    args = ("data=npz", f"data.path={indicator_file}", "method=cap", "train.probe_epochs=2")
    _, full = _run(tmp_path, "full", *args)
    cfg, _ = _run(tmp_path, "stopped", *args, "train.stop_after_epoch=2")
    import bbam.app.plan as plan_module

    def refuse(*a, **k):
        raise AssertionError("a resumed run must not probe again")

    original = plan_module.choose_on_validation
    plan_module.choose_on_validation = refuse
    try:
        _, resumed = _run(tmp_path, "resumed", *args, f"train.resume={cfg.out_dir}/checkpoints/last.pt")
    finally:
        plan_module.choose_on_validation = original
    assert resumed["test"] == full["test"]


def test_auto_model_without_a_probe_resumes_with_the_model_it_recorded(tmp_path, indicator_file, monkeypatch):
    """model=auto with train.probe_epochs=0 takes model.auto's first entry; resumed, it builds
    the model section its plan recorded, whatever configs/model/*.yaml say by then."""
    import bbam.app.probe as probe_module

    args = ("data=npz", f"data.path={indicator_file}", "method=supervised", "train.probe_epochs=0",
            "model.auto=[linear,mlp]")
    _, full = _run(tmp_path, "full", *args)
    cfg, _ = _run(tmp_path, "stopped", *args, "train.stop_after_epoch=2")
    real = probe_module.model_section

    def changed(name):  # as if linear.yaml had changed its optimizer since the run started
        section = real(name)
        return {**section, "optimizer": {"name": "adamw", "lr": None}} if name == "linear" else section

    monkeypatch.setattr(probe_module, "model_section", changed)
    _, resumed = _run(tmp_path, "resumed", *args, f"train.resume={cfg.out_dir}/checkpoints/last.pt")
    assert resumed["test"] == full["test"]


def test_probe_epochs_zero_falls_back_to_the_rule_and_negatives_rule_out_tfidf(tmp_path, indicator_file):
    from bbam.app.probe import probe_candidates

    _run(tmp_path, "rule", "data=npz", f"data.path={indicator_file}", "method=supervised", "train.probe_epochs=0")
    plan = json.loads((tmp_path / "rule" / "plan.json").read_text())
    assert "probe" not in plan["scaling"] and plan["scaling"]["scaling"] == "tfidf_l2"  # the rule: 80 % zeros
    cfg = json.loads((tmp_path / "rule" / "final_metrics.json").read_text())
    assert cfg["test"]["mAP"] > 0

    cfg = compose_config(["data=npz", "data.path=x.npz", "method=supervised"])
    assert [c["scaling"] for c in probe_candidates(cfg, torch.tensor([[-1.0, 0.0]]))] == ["standardize"] * 2
    assert [c["model"] for c in probe_candidates(cfg, torch.tensor([[1.0, 0.0]]))] == ["mlp", "mlp", "linear",
                                                                                       "linear"]
    # a cosine head is not offered the model that passes its inputs through (angles of raw rows)
    for method in ("bam", "bbam", "bbam_cls"):
        angular = compose_config(["data=npz", "data.path=x.npz", f"method={method}"])
        assert [c["model"] for c in probe_candidates(angular, torch.tensor([[1.0, 0.0]]))] == ["mlp", "mlp"]
    only_linear = compose_config(["data=npz", "data.path=x.npz", "method=bbam", "model.auto=[linear]"])
    with pytest.raises(ValueError, match="'model.auto' lists only models that pass the inputs through"):
        probe_candidates(only_linear, torch.tensor([[1.0, 0.0]]))


def test_the_probe_leaves_the_callers_config_and_random_state_alone(indicator_file):
    from omegaconf import OmegaConf

    from bbam.app.plan import prepare

    cfg = compose_config(["data=npz", f"data.path={indicator_file}", "train.probe_epochs=1", "train.progress=false"])
    before_cfg = OmegaConf.to_yaml(cfg)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    plan = prepare(cfg)
    assert torch.equal(torch.get_rng_state(), state)
    assert OmegaConf.to_yaml(cfg) == before_cfg
    probe = plan.scaling["probe"]
    assert plan.model == probe["model_section"] and plan.record["model"] == plan.model
    assert plan.model["encoder"]["_target_"].endswith(("MLPEncoder", "LinearEncoder"))


def test_a_checkpoint_from_before_these_keys_resumes_only_as_it_trained(tmp_path):
    """A ``last.pt`` whose settings predate pseudo_labels / teacher / graph / certainty resumes
    with the values that train as it did, but not with graph pseudo-labels, nor with today's
    default for CAP (``auto``), which trains otherwise."""
    older = ("method=cap", "method.pseudo_labels=model")  # CAP as it trained before the keys
    cfg, _ = _run(tmp_path, "stopped", *older, "train.stop_after_epoch=2")
    last = Path(cfg.out_dir) / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["settings"] = {k: v for k, v in ckpt["settings"].items()
                        if not k.startswith(("method.pseudo_labels", "method.teacher", "method.graph.",
                                             "method.weight_by_certainty"))}
    torch.save(ckpt, last)
    _, full = _run(tmp_path, "full", *older)
    _, resumed = _run(tmp_path, "resumed", *older, f"train.resume={last}")
    assert resumed["test"] == full["test"]
    with pytest.raises(ValueError, match="method.pseudo_labels"):
        _run(tmp_path, "other", "method=cap", "method.pseudo_labels=graph", f"train.resume={last}")
    with pytest.raises(ValueError, match="method.pseudo_labels: '<absent>' in the checkpoint, 'auto' now"):
        _run(tmp_path, "default", "method=cap", f"train.resume={last}")
