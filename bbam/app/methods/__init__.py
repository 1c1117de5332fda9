"""Training methods as plugins: one class per method, built from ``method._target_``.

``supervised`` (:class:`Supervised`), ``cap`` (:class:`CAP`), ``bam`` (:class:`BAM`),
``bbam`` and ``bbam_cls`` (:class:`BBAM`), ``fixmatch`` (:class:`FixMatch`) and
``softmatch`` (:class:`SoftMatch`). A new method is a subclass of :class:`Method` and a
YAML file naming it in ``_target_``; the engine does not change (:mod:`.base` lists the hooks).
"""
from .base import Forward, Method
from .consistency import FixMatch, SoftMatch
from .legacy import build_method, method_config
from .pseudo_labels import BAM, BBAM, CAP, Supervised

__all__ = ["Method", "Forward", "Supervised", "CAP", "BAM", "BBAM", "FixMatch", "SoftMatch", "build_method",
           "method_config"]
