"""Multi-label datasets: the container, the readers, the synthetic benchmark, the splits.

One module per concern (library layer: standard library, numpy, torch, and scikit-learn's
LIBSVM reader; no Hydra, nothing from :mod:`bbam.app` or :mod:`bbam.train`):

* :mod:`~bbam.data.container` -- :class:`MultiLabelData` (``X`` float32 ``[N, D]``,
  ``Y`` int8 ``[N, K]`` in {0, 1}, names, optional official split) and
  :class:`DatasetFormatError`;
* :mod:`~bbam.data.synthetic` -- :func:`make_synthetic`, the default dataset;
* file formats, each error naming the file (and the line of text formats):
  :mod:`~bbam.data.npz` (:func:`load_npz`, :func:`save_npz`), :mod:`~bbam.data.arff`
  (:func:`load_arff`, :func:`load_arff_pair`; MULAN ``.xml`` and MEKA ``-C`` label
  headers), :mod:`~bbam.data.libsvm` (:func:`load_libsvm`);
* :mod:`~bbam.data.inputs` -- raw text: :func:`load_text_jsonl` (own vocabulary, or a
  pretrained sentence encoder through :mod:`~bbam.data.sentence`);
* images, decoded per batch (:class:`~bbam.data.image_rows.ImageRows`; a frozen
  backbone's cached features come from :mod:`bbam.vision.features`, not from here):
  :func:`load_image_folder` (:mod:`~bbam.data.images`), :func:`load_voc`
  (:mod:`~bbam.data.voc`), :func:`load_coco` (:mod:`~bbam.data.coco`);
* :mod:`~bbam.data.lookup` -- :func:`load_dataset` by file, directory or name;
  :func:`default_data_dirs`;
* :mod:`~bbam.data.splits` -- :func:`iterative_stratification`, :func:`split_indices`.
"""

from .arff import load_arff, load_arff_pair
from .container import DatasetFormatError, MultiLabelData
from .coco import load_coco
from .image_rows import ImageDecodeError, ImageRows
from .images import image_dataset, load_image_folder
from .inputs import load_text_jsonl, token_ids, tokenize
from .libsvm import load_libsvm
from .lookup import default_data_dirs, load_dataset
from .npz import load_npz, save_npz
from .splits import iterative_stratification, split_indices
from .synthetic import make_synthetic
from .voc import load_voc

__all__ = [
    "DatasetFormatError",
    "MultiLabelData",
    "make_synthetic",
    "load_npz",
    "save_npz",
    "load_arff",
    "load_arff_pair",
    "load_libsvm",
    "load_dataset",
    "default_data_dirs",
    "tokenize",
    "token_ids",
    "load_text_jsonl",
    "load_image_folder",
    "load_voc",
    "load_coco",
    "image_dataset",
    "ImageRows",
    "ImageDecodeError",
    "iterative_stratification",
    "split_indices",
]
