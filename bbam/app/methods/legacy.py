"""Building a method from its config, including the configs of runs saved before methods were classes.

Run folders and checkpoints written before the method seam hold a ``method`` section of
flags (``self_training``, ``balance``, ``negative_sampling``, ``head``, ...) instead of a
``_target_``. :func:`method_config` maps such a section to the equivalent class config, so
those runs still resume and predict with the same behaviour.
"""
from __future__ import annotations

from typing import Any, Dict

__all__ = ["method_config", "build_method"]

_PACKAGE = "bbam.app.methods"


def _plain(node) -> Dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def method_config(mc) -> Dict[str, Any]:
    """The ``method`` section ``mc`` as a class config (``_target_`` first): unchanged when it
    has a ``_target_``, else translated from the flags of an older run."""
    mc = _plain(mc)
    if "_target_" in mc:
        return mc
    name = str(mc.get("name", "method"))
    if not mc.get("self_training", True):
        return {"_target_": f"{_PACKAGE}.Supervised", "name": name}
    cap = mc.get("cap") or {}
    shares = {"pos_per": float(cap.get("pos_per", 1.0)), "neg_per": float(cap.get("neg_per", 0.998))}
    if mc.get("head", "cosine") == "linear":
        loss = mc.get("loss") or {}
        asl = {key: float(loss[key]) for key in ("gamma_neg", "gamma_pos", "clip") if key in loss}
        return {"_target_": f"{_PACKAGE}.CAP", "name": name, **shares, **asl}
    out = {"_target_": f"{_PACKAGE}.BBAM" if mc.get("balance", True) else f"{_PACKAGE}.BAM", "name": name,
           "margin": float(mc.get("margin", 0.4)), "scale": float(mc.get("scale", 20.0)),
           "predict_margin_fraction": float(mc.get("predict_margin_fraction", 0.5)),
           "features_from": str(mc.get("features_from", "online")), **shares,
           "sampling": mc.get("sampling") if mc.get("negative_sampling", True) else None}
    if mc.get("balance", True):
        out.update(stats_gamma=float(mc.get("stats_gamma", 0.01)), stats_angles=str(mc.get("stats_angles", "prototype")))
    return out


def build_method(mc):
    """The :class:`~bbam.app.methods.Method` of the ``method`` config section ``mc``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from .base import Method

    conf = method_config(mc)
    try:
        method = instantiate(conf, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, (ValueError, TypeError)):
            raise ValueError(f"config section 'method' ({conf.get('_target_')}): {cause}") from None
        raise
    if not isinstance(method, Method):
        raise TypeError(f"config key 'method._target_' must name a subclass of bbam.app.methods.Method, "
                        f"got {type(method).__name__} from {conf.get('_target_')!r}")
    return method
