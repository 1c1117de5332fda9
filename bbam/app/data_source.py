"""Where a run's data came from, so a resumed run finds it again (application layer).

A named set (``data=emotions``) is looked up in the data folders (``$BBAM_DATA_DIR``,
``~/.cache/bbam/data``, ...), which depend on the shell the run started in. :func:`describe`
records the file the name resolved to (absolute path) and its SHA-256; the record is saved
in every checkpoint and in ``final_metrics.json``. On resume, :func:`load` builds the data
as configured; when the name (or path) no longer resolves it uses the recorded file, and
it says so, as it does when the file's bytes changed since the run started.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from bbam.hashing import file_sha256

__all__ = ["describe", "load"]

log = logging.getLogger("bbam.train")

# the data config keys that name where the data is, in the order they are looked for
LOCATION_KEYS = ("path_or_name", "path", "root")


def _location_key(data_cfg) -> Optional[str]:
    return next((key for key in LOCATION_KEYS if data_cfg.get(key) is not None), None)


def describe(data_cfg, data) -> Optional[Dict[str, Any]]:
    """``{"key", "given", "location", "file", "sha256"}`` of a dataset read from a file:
    the config key naming it (``data.path_or_name``, ``data.path`` or ``data.root``), its
    value as given, the absolute location to give that key instead, the file read
    (``data.source``: the ``.npz`` / ARFF / label file) and its SHA-256. None for data not
    read from one file (the synthetic set, an ARFF pair)."""
    key = _location_key(data_cfg)
    source = Path(str(data.source)) if data.source else None
    if key is None or source is None or not source.is_file():
        return None
    given = str(data_cfg.get(key))
    location = Path(given).resolve() if key == "root" else source.resolve()
    return {"key": f"data.{key}", "given": given, "location": str(location), "file": str(source.resolve()),
            "sha256": file_sha256(source)}


def load(data_cfg, instantiate, record: Optional[Dict[str, Any]] = None):
    """The dataset of ``data_cfg`` (built by ``instantiate(data_cfg, **overrides)``); with the
    ``record`` of the run being resumed, the recorded file when the configured name or path
    no longer resolves, and a warning when the file changed since the run started."""
    try:
        data = instantiate(data_cfg)
    except FileNotFoundError:
        if not record or not Path(record["location"]).exists():
            raise
        key = record["key"].split(".", 1)[1]
        log.warning("%s=%s is not found from this shell; using the file the run was trained on: %s",
                    record["key"], record["given"], record["location"])
        data = instantiate(data_cfg, **{key: record["location"]})
    if record:
        now = describe(data_cfg, data)
        if now is not None and now["sha256"] != record["sha256"]:
            log.warning("the data file %s changed since the run started (SHA-256 %s… then, %s… now): the "
                        "resumed epochs train on the new contents", now["file"], record["sha256"][:12],
                        now["sha256"][:12])
    return data
