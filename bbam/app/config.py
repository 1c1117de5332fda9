"""The app's Hydra config: where it lives, composing it, and its resolvers (application
layer; below :mod:`bbam.train`, so the modules that check or read configs need not import
the command line)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Dict

__all__ = ["config_dir", "compose_config", "register_resolvers", "data_file", "plain_section"]


def register_resolvers() -> None:
    """``${bbam_file_stem:path}``: a file's name without folder and suffix (the data configs
    of files name their runs and reports after the file, e.g. ``emotions`` for emotions.npz);
    ``${bbam_data_file:relative/path}``: see :func:`data_file`."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("bbam_file_stem"):
        OmegaConf.register_new_resolver("bbam_file_stem", lambda path: Path(str(path)).stem)
    if not OmegaConf.has_resolver("bbam_data_file"):
        OmegaConf.register_new_resolver("bbam_data_file", data_file)


def data_file(relative: str) -> str:
    """``${bbam_data_file:reuters21578/x.jsonl}``: the file under the first data folder that
    holds it (:func:`bbam.data.lookup.default_data_dirs`; ``python -m bbam.data.fetch``
    downloads the named sets there), as an absolute path, so a
    shipped config finds it from any working directory; when no folder holds it, the path
    under the first folder (named by the reader's file-not-found error)."""
    from bbam.data.lookup import default_data_dirs

    dirs = default_data_dirs()
    for folder in dirs:
        if (folder / relative).exists():
            return str((folder / relative).resolve())
    return str((dirs[0] / relative).absolute())


def config_dir() -> str:
    """The Hydra config folder: the installed ``bbam/configs`` or the source tree's ``configs/``."""
    packaged = resources.files("bbam") / "configs"
    if packaged.is_dir():
        return str(packaged)
    source = Path(__file__).resolve().parents[2] / "configs"
    if source.is_dir():
        return str(source)
    raise FileNotFoundError("bbam: Hydra configs not found (expected bbam/configs or the repository's configs/)")


def compose_config(overrides=(), config_name: str = "train"):
    """The app's config composed with Hydra ``overrides`` (outside a Hydra run: ``out_dir``
    must then be set by the caller before :func:`train`)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))



def plain_section(node) -> Dict[str, Any]:
    """A section of the plan's read-only config as plain values, interpolations resolved, to
    instantiate from (Hydra's ``instantiate`` resolves a config node in place)."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


register_resolvers()  # a config composed by Hydra directly (tests, notebooks) resolves ${bbam_...:} too
