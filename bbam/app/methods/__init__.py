"""Training methods as plugins: one class per method, built from ``method._target_``.

``supervised`` (:class:`Supervised`), ``cap`` (:class:`CAP`), ``labelprop``
(:class:`LabelProp`), ``bam`` (:class:`BAM`), ``bbam`` and ``bbam_cls`` (:class:`BBAM`),
``fixmatch`` (:class:`FixMatch`), ``softmatch`` (:class:`SoftMatch`) and ``freematch``
(:class:`FreeMatch`); the CAP family's graph pseudo-labels are :class:`GraphLabels`. A new method is a subclass of :class:`Method` and a
YAML file naming it in ``_target_``; the engine does not change (:mod:`.base` lists the hooks).
:func:`build_method` builds the method of a ``method`` config section (run folders written
by an older bbam, whose section held flags instead of a ``_target_``, are rewritten once by
``python -m bbam.migrate``).
"""
from typing import Any, Mapping, Optional

from .base import Forward, Method
from .consistency import FixMatch, FreeMatch, SoftMatch
from .graph_labels import GraphLabels
from .pseudo_labels import BAM, BBAM, CAP, LabelProp, Supervised

__all__ = ["Method", "Forward", "Supervised", "CAP", "LabelProp", "BAM", "BBAM", "FixMatch", "SoftMatch", "FreeMatch",
           "GraphLabels", "build_method"]


def build_method(mc, resolved: Optional[Mapping[str, Any]] = None) -> Method:
    """The :class:`Method` of the ``method`` config section ``mc`` (a ``DictConfig`` or a
    dict): its ``_target_`` class instantiated with the section's other keys, a key left
    ``auto`` taking its value from ``resolved`` (the run's plan: ``margin``, ``scale``;
    :mod:`bbam.app.plan`). A section
    without ``_target_`` (the flags of an older bbam's runs) is refused, naming
    ``python -m bbam.migrate``; a bad value is a ``ValueError`` naming the section."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    conf = OmegaConf.to_container(mc, resolve=True) if isinstance(mc, DictConfig) else dict(mc)
    conf.update({k: v for k, v in (resolved or {}).items() if str(conf.get(k)) == "auto"})
    if "_target_" not in conf:
        raise ValueError("config section 'method' has no _target_ (the flags of a run written by an older bbam: "
                         "run python -m bbam.migrate <run folder> once)")
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
