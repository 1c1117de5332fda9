"""The engine of a run's plan: its method, model and views (application layer).

:func:`build_engine` is shared by training (:mod:`bbam.app.run`), the scikit-learn
estimator, the validation probe (:mod:`bbam.app.probe`) and ``bench/``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import plain_section

__all__ = ["build_engine"]


def build_engine(plan, out_dir, resume=None):
    """The method (from ``method._target_``, its ``auto`` margin / scale the plan's), the
    model (seeded by ``cfg.seed``), the views of unlabeled batches (``model.views``, when the
    method uses views) and the :class:`SelfTrainingEngine` of a run's :class:`RunPlan`,
    continuing from ``resume`` (``(path, checkpoint)`` of a ``last.pt``) when given."""
    from hydra.utils import instantiate

    from .engine import SelfTrainingEngine
    from .methods import build_method
    from .models import MultiLabelModel

    cfg, data = plan.cfg, plan.data
    method = build_method(cfg.method, resolved=plan.method_values)
    torch.manual_seed(int(cfg.seed))  # model init independent of what data loading consumed
    encoder = instantiate(plain_section(plan.model["encoder"]), in_dim=plan.num_features)
    model = MultiLabelModel(encoder, method.make_head(encoder.out_dim, data.num_labels))
    views = None
    if method.views:
        if plan.model.get("views") is None:
            raise ValueError(f"method {method.name!r} trains on weak/strong views, but config key 'model.views' "
                             f"is not set (see configs/model/mlp.yaml)")
        views = instantiate(plain_section(plan.model["views"]))
        if views.needs_images and plan.scaling["scaling"] != "none":
            raise ValueError(f"model.views.space=images makes views from the frozen backbone's raw features, but "
                             f"train.scaling={plan.scaling['scaling']} scales the cached ones: use train.scaling=none")
        views.prepare(plan)  # e.g. the bank of view features (computed once, cached)
    return SelfTrainingEngine(plan, model, method, Path(out_dir), views=views, resume=resume)
