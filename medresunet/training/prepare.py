"""From a manifest and a config to what :func:`~medresunet.training.loop.train` needs.

The steps between reading a manifest and the first optimizer step, as a Python API::

    from medresunet.config import load_config
    from medresunet.manifest import load_manifest
    from medresunet.training.prepare import prepare_training
    from medresunet.training.loop import train

    config = load_config("demo")
    job = prepare_training(load_manifest("data/manifest.json"), config)
    result = train(config, job.model, job.data, job.info, "runs/demo", torch.device("cpu"))

:func:`prepare_training` splits the cases (fold of the config), checks every file before
anything is trained, measures the preprocessing from the training cases (the
fingerprint; or takes the one of a resumed run), builds the cached datasets and the
network. Under DDP every rank calls it: rank 0 checks and measures, the others receive
its verdict and its preprocessing, and each rank caches only its own share of the
training cases. Torch is imported only after the checks, so bad input fails fast.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medresunet.config import Config
from medresunet.errors import ManifestError, UsageError
from medresunet.manifest import Case, Manifest, split_cases
from medresunet.training import distributed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingJob:
    """Everything one rank trains with.

    Attributes:
        train_cases: all training cases (of every rank).
        val_cases: the validation cases.
        preprocessing: the ``data.preprocessing.Preprocessing`` of the run.
        data: this rank's ``TrainData`` (datasets and padding background).
        info: the ``ModelInfo`` the checkpoints record.
        model: the freshly built network (initial weights depend on ``train.seed`` only).
    """

    train_cases: list[Case]
    val_cases: list[Case]
    preprocessing: Any
    data: Any
    info: Any
    model: Any


def training_cases(manifest: Manifest, config: Config, world_size: int = 1) -> tuple[list[Case], list[Case]]:
    """Training and validation cases of the config's fold.

    Raises:
        ManifestError: no labelled training case.
        UsageError: more ranks than training cases.
    """
    tc = config.train
    train_cases, val_cases = split_cases(manifest, tc.fold, tc.folds, tc.seed)
    if not train_cases:
        raise ManifestError(f"manifest {manifest.path}: no labelled training cases")
    if world_size > len(train_cases):
        raise UsageError(f"{world_size} ranks but only {len(train_cases)} training case(s) in "
                         f"{manifest.path}: start at most {len(train_cases)} processes")
    return train_cases, val_cases


def measure_preprocessing(train_cases: Sequence[Case], channels: Sequence[str], config: Config,
                          quiet: bool = False) -> Any:
    """The fingerprint of the training cases as a ``Preprocessing``.

    Raises:
        ManifestError: the cases cannot be measured (the message says why).
    """
    from medresunet.data.fingerprint import fingerprint

    try:
        return fingerprint(train_cases, channels, config.data, config.model.spatial_dims, quiet=quiet,
                           seed=config.train.seed)
    except ValueError as err:
        raise ManifestError(f"cannot measure the training cases: {err}") from err


def make_train_data(train_cases: Sequence[Case], val_cases: Sequence[Case], prep: Any, config: Config,
                    quiet: bool = False, n_classes: int | None = None) -> Any:
    """Cached training / validation datasets and the per-image background, as ``TrainData``.

    ``n_classes`` (background included) is what ``data.sampling: classes`` spreads the
    patch centres over.
    """
    from medresunet.data.datasets import make_train_dataset, make_val_dataset
    from medresunet.data.transforms import background_value
    from medresunet.training.run_state import TrainData

    data = config.data
    logger.info("preprocessing %d training and %d validation cases", len(train_cases), len(val_cases))
    train_data = make_train_dataset(list(train_cases), prep, data, progress=not quiet, n_classes=n_classes)
    val_data = (make_val_dataset(list(val_cases), prep, cache=data.cache, cache_dir=data.cache_dir,
                                 num_workers=data.num_workers, progress=not quiet)
                if val_cases else [])

    def background(image: Any) -> list[float]:
        return [float(background_value(prep, c, image)) for c in range(prep.n_channels)]

    return TrainData(train=train_data, val=val_data, background=background)


def _shared_preprocessing(train_cases: list[Case], manifest: Manifest, config: Config,
                          resumed: dict[str, Any] | None, dist: distributed.DistInfo, quiet: bool) -> Any:
    """The resumed run's preprocessing, or the one rank 0 measures, on every rank."""
    from medresunet.data.preprocessing import Preprocessing

    if resumed is not None:
        return Preprocessing.from_dict(resumed)
    prep_dict = (measure_preprocessing(train_cases, manifest.channels, config, quiet).to_dict()
                 if dist.is_main else None)
    return Preprocessing.from_dict(distributed.broadcast_object(dist, prep_dict))


def prepare_training(manifest: Manifest, config: Config, *, preprocessing: dict[str, Any] | None = None,
                     dist: distributed.DistInfo | None = None, quiet: bool = False) -> TrainingJob:
    """Split, check, measure, cache and build: the job one rank trains.

    Args:
        manifest: the parsed manifest (``manifest.load_manifest``).
        config: the resolved config.
        preprocessing: the stored preprocessing of a resumed run (``Preprocessing.to_dict()``);
            ``None`` measures it from the training cases.
        dist: this rank's process group (``None``: a single process).
        quiet: no progress bars.

    Returns:
        A :class:`TrainingJob`.

    Raises:
        ManifestError: no training cases, or a case's files are unreadable or disagree.
        UsageError: more ranks than training cases.
    """
    from medresunet.data.checks import check_cases

    dist = dist or distributed.SINGLE
    train_cases, val_cases = training_cases(manifest, config, dist.world_size)
    if dist.is_main:  # the others wait for its verdict (and stop with it: torchrun ends the job)
        check_cases([*train_cases, *val_cases], manifest.labels, len(manifest.channels), progress=not quiet)
    distributed.barrier(dist)
    logger.info("%d training and %d validation cases from %s", len(train_cases), len(val_cases), manifest.path)

    from medresunet.networks import build_network, network_kwargs  # torch: after the fast checks
    from medresunet.training.run_state import ModelInfo
    from medresunet.training.state import seed_everything

    prep = _shared_preprocessing(train_cases, manifest, config, preprocessing, dist, quiet)
    logger.info("preprocessing: %s", prep.to_dict())
    own_cases = distributed.shard(train_cases, dist.rank, dist.world_size)  # this rank's share only
    n_in, n_out = len(manifest.channels), max(manifest.labels.values()) + 1
    data = make_train_data(own_cases, val_cases if dist.is_main else [], prep, config, quiet or not dist.is_main,
                           n_classes=n_out)
    info = ModelInfo(kwargs=network_kwargs(config.model, n_in, n_out), labels=manifest.labels,
                     input_channels=list(manifest.channels), preprocessing=prep)
    seed_everything(config.train.seed)  # the initial weights depend on the seed only
    model = build_network(config.model, n_in, n_out)
    return TrainingJob(train_cases=train_cases, val_cases=val_cases, preprocessing=prep, data=data,
                       info=info, model=model)
