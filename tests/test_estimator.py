"""bbam.estimator.SemiSupervisedMultiLabelClassifier: fit/predict on in-memory arrays and
the scikit-learn contract (clone, params, Pipeline, the applicable estimator checks)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import estimator_checks as E  # noqa: E402

from bbam.data import make_synthetic  # noqa: E402
from bbam.app.predict import Predictor  # noqa: E402
from bbam.estimator import SemiSupervisedMultiLabelClassifier  # noqa: E402

FAST = ["model.encoder.hidden=[32]", "model.encoder.out_dim=16", "train.min_steps_per_epoch=2"]


def _fast(**kw) -> SemiSupervisedMultiLabelClassifier:
    return SemiSupervisedMultiLabelClassifier(**{"epochs": 3, "warmup_epochs": 1, "overrides": list(FAST), **kw})


@pytest.fixture(scope="module")
def data():
    """X [400, 12], true Y [400, 5] and the learner's Y: 70% of rows unknown (-1), a few
    partially known rows (some -1 entries)."""
    d = make_synthetic(num_samples=400, num_features=12, num_labels=5)
    X, Y = d.X.numpy(), d.Y.numpy().astype(np.int64)
    rng = np.random.default_rng(0)
    Y_obs = Y.copy()
    Y_obs[rng.random(400) < 0.7] = -1
    partial = np.flatnonzero((Y_obs != -1).all(1))[:10]
    Y_obs[partial, 0] = -1
    return X, Y, Y_obs, partial


@pytest.fixture(scope="module")
def fitted(data):
    X, _, Y_obs, _ = data
    return _fast().fit(X, Y_obs)


def test_fit_predict(fitted, data):
    X, Y, Y_obs, _ = data
    proba = fitted.predict_proba(X)
    assert proba.shape == (400, 5) and proba.dtype == np.float32
    assert (proba >= 0).all() and (proba <= 1).all()
    pred = fitted.predict(X)
    assert pred.shape == (400, 5) and set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (proba >= 0.5).astype(np.int64))
    assert len(fitted.classes_) == 5 and all(list(c) == [0, 1] for c in fitted.classes_)
    assert fitted.n_features_in_ == 12 and fitted.n_labels_ == 5 and len(fitted.label_names_) == 5
    n_labeled = int((Y_obs != -1).any(1).sum())  # partial rows are labeled rows (unknown -> negative)
    sizes = fitted.split_sizes_
    assert sizes["labeled"] + sizes["val"] == n_labeled and sizes["unlabeled"] == 400 - n_labeled
    assert sizes["val"] == round(0.2 * n_labeled)
    assert fitted.run_dir_ is None  # temporary run folder, removed after loading
    assert 0.0 <= fitted.score(X, Y) <= 1.0  # ClassifierMixin: subset accuracy
    np.testing.assert_array_equal(fitted.predict_proba(torch.from_numpy(X)), proba)  # tensors accepted


def test_partial_rows_can_join_the_unlabeled_pool(data):
    X, _, Y_obs, partial = data
    clf = _fast(partial_labels="unlabeled", epochs=2).fit(X, Y_obs)
    n_full = int((Y_obs != -1).all(1).sum())
    assert clf.split_sizes_["labeled"] + clf.split_sizes_["val"] == n_full
    assert clf.split_sizes_["unlabeled"] == 400 - n_full and len(partial) == 10


def test_out_dir_keeps_a_run_the_predictor_loads(data, tmp_path):
    X, _, Y_obs, _ = data
    clf = _fast(method="bam", out_dir=str(tmp_path / "run"), thresholds="tuned").fit(X, Y_obs)
    assert clf.run_dir_ == str(tmp_path / "run")
    for name in ("config.yaml", "checkpoints/best.pt", "scaler.pt", "labels.json", "thresholds.json"):
        assert (tmp_path / "run" / name).is_file(), name
    predictor = Predictor.from_run(tmp_path / "run")
    np.testing.assert_array_equal(predictor.predict_proba(X), clf.predict_proba(X))  # numpy both
    tuned = np.asarray(json.loads((tmp_path / "run" / "thresholds.json").read_text())["tuned"], np.float32)
    np.testing.assert_array_equal(clf.predict(X), (clf.predict_proba(X) >= tuned).astype(np.int64))


def test_fully_labeled_data_trains_without_self_training(data):
    X, Y, _, _ = data
    clf = _fast(epochs=2).fit(X[:120], Y[:120])  # no unlabeled row: the engine's supervised path
    assert clf.split_sizes_["unlabeled"] == 0 and clf.predict(X).shape == (400, 5)


def test_clone_params_and_pipeline(data):
    X, _, Y_obs, _ = data
    clf = _fast(random_state=3)
    params = clf.get_params()
    assert params["random_state"] == 3 and params["overrides"] == FAST and params["method"] == "bbam"
    twin = clone(clf)
    assert twin.get_params() == params and twin is not clf
    twin.set_params(method="cap", validation_fraction=0.3)
    assert twin.method == "cap" and clf.method == "bbam"
    pipe = Pipeline([("scale", StandardScaler()), ("clf", _fast(epochs=2))])
    pipe.set_params(clf__random_state=1)
    assert pipe.get_params()["clf__random_state"] == 1
    pipe.fit(X, Y_obs)
    assert pipe.predict(X).shape == (400, 5) and pipe.predict_proba(X).shape == (400, 5)


# the scikit-learn checks that apply to a multi-label estimator whose Y holds {1, 0, -1}
# (the others fit multiclass or 1-D targets, which this estimator rejects by design)
APPLICABLE_CHECKS = [
    "check_get_params_invariance", "check_set_params", "check_no_attributes_set_in_init",
    "check_parameters_default_constructible", "check_estimator_cloneable", "check_estimator_repr",
    "check_mixin_order", "check_valid_tag_types", "check_estimators_unfitted",
    "check_do_not_raise_errors_in_init_or_set_params", "check_classifiers_multilabel_output_format_predict",
    "check_classifiers_multilabel_output_format_predict_proba", "check_fit_check_is_fitted",
    "check_estimators_pickle", "check_fit_idempotent", "check_estimators_nan_inf", "check_n_features_in",
    "check_classifiers_multilabel_representation_invariance", "check_pipeline_consistency",
    "check_fit2d_1sample", "check_estimators_empty_data_messages",
]


@pytest.mark.parametrize("check", APPLICABLE_CHECKS)
def test_sklearn_estimator_checks(check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(E, check)("SemiSupervisedMultiLabelClassifier", _fast(epochs=2))


def test_errors(data):
    X, Y, Y_obs, _ = data
    with pytest.raises(NotFittedError):
        _fast().predict(X)
    with pytest.raises(ValueError, match=r"only 1 \(positive\), 0 \(negative\) and -1"):
        _fast().fit(X, np.where(Y == 1, 2, 0))
    with pytest.raises(ValueError, match="at least 2 labeled rows"):
        _fast().fit(X, np.full_like(Y, -1))
    with pytest.raises(ValueError, match="partial_labels"):
        _fast(partial_labels="drop").fit(X, Y_obs)
    with pytest.raises(ValueError, match="validation_fraction"):
        _fast(validation_fraction=1.0).fit(X, Y_obs)
    with pytest.raises(ValueError, match="thresholds"):
        _fast(thresholds="best").fit(X, Y_obs)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        _fast().fit(X, Y_obs[:10])
    with pytest.raises(ValueError, match="2-D array"):
        _fast().fit(X, Y_obs[:, 0])


def test_predict_checks_the_width(fitted, data):
    X = data[0]
    with pytest.raises(ValueError, match="12 features"):
        fitted.predict(X[:, :11])
    bad = X[:3].copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        fitted.predict_proba(bad)
