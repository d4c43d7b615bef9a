# Copyright (c) galddc_mm contributors. All rights reserved.
"""Helpers shared by the scripts of ``tools/analysis``.

The scripts import this module by name: running ``python
tools/analysis/<script>.py`` puts this folder first on ``sys.path``.

- :func:`resolve_run`: a work dir (or a config + checkpoint) to the config
  and checkpoint to load.
- :func:`load_model`: build a ``GALDDCClassifier`` from a config and load a
  checkpoint, on the CPU by default.
- :func:`extract_real_latents`: latents of the training images (test
  pipeline, no augmentation) from the frozen encoder E^(0) or the current
  encoder E.
- :func:`sample_generated_latents`: DDIM latents of the diffusion head with
  a fixed seed.
- :func:`add_output_args` / :func:`save_figure`: the common ``--out``,
  ``--format``, ``--dpi`` and ``--tensorboard`` options.
"""
import os
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import matplotlib

# Headless: the scripts only write files (no display on CI or servers).
matplotlib.use('Agg')

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from galddc_mm.utils import WorkDir  # noqa: E402

FORMATS = ('png', 'svg', 'pdf')
ENCODERS = ('frozen', 'current')


def resolve_run(source: str,
                checkpoint: Optional[str] = None,
                checkpoint_kind: str = 'last'
                ) -> Tuple[str, str, Optional[WorkDir]]:
    """Find the config and checkpoint of a run.

    Args:
        source (str): A work dir (its dumped config is used) or a config
            file (then ``checkpoint`` is required).
        checkpoint (str, optional): The checkpoint; with a work dir,
            overrides ``checkpoint_kind``. Defaults to None.
        checkpoint_kind (str): With a work dir and no ``checkpoint``:
            ``'last'`` or ``'best'`` (see :meth:`WorkDir.checkpoint`).
            Defaults to ``'last'``.

    Returns:
        tuple: ``(config, checkpoint, work_dir)``, ``work_dir`` being a
        :class:`WorkDir` or None when ``source`` is a config.
    """
    if osp.isdir(source):
        work_dir = WorkDir(source)
        return (work_dir.config(), checkpoint
                or work_dir.checkpoint(checkpoint_kind), work_dir)
    if not osp.isfile(source):
        raise FileNotFoundError(
            f'{source!r} is neither a work dir nor a config file.')
    if checkpoint is None:
        raise ValueError(
            f'{source!r} is a config: also pass --checkpoint, or pass the '
            'work dir of the run instead of its config.')
    return source, checkpoint, None


def load_model(config: str, checkpoint: str, device: str = 'cpu'):
    """Build the model of ``config`` and load ``checkpoint`` into it.

    Args:
        config (str): The config file.
        checkpoint (str): The checkpoint file.
        device (str): Where the model runs. Defaults to ``'cpu'``.

    Returns:
        tuple: ``(model, cfg)``, the model in eval mode and the
        :class:`mmengine.Config`.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS

    import galddc_mm  # noqa: F401  (registers the classes; safe loading)

    cfg = Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    model.to(device).eval()
    if not hasattr(model, 'diffusion_head') or not hasattr(
            model, 'geometry'):
        raise TypeError(
            f'{config!r} builds a {type(model).__name__}; this analysis '
            'needs a GALD-DC model (GALDDCClassifier, with a diffusion head '
            'and class geometry).')
    if not model.geometry_ready:
        raise RuntimeError(
            f'The class geometry of {checkpoint!r} is not initialised: the '
            'checkpoint was saved before the diffusion stage. Use a '
            'checkpoint from stage 2 or later (e.g. the last one).')
    return model, cfg


@torch.no_grad()
def extract_real_latents(model,
                         cfg,
                         encoder: str = 'frozen',
                         batch_size: int = 256
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Latents of every training image.

    The training set of ``cfg.train_dataloader`` is rebuilt with the test
    pipeline (no augmentation), as the latent cache of stage 2 is.

    Args:
        model (GALDDCClassifier): The loaded model.
        cfg (Config): Its config.
        encoder (str): ``'frozen'``: E^(0)(x), the latents the diffusion
            model was trained on; ``'current'``: E(x), which the hybrid
            stage 3 moves. Defaults to ``'frozen'``.
        batch_size (int): Images per forward. Defaults to 256.

    Returns:
        tuple[Tensor, Tensor]: Latents ``(N, D)`` and labels ``(N,)``.
    """
    from mmengine.dataset import pseudo_collate
    from mmpretrain.registry import DATASETS
    from torch.utils.data import DataLoader

    from galddc_mm.engine.loops.latent_cache import extract_latents

    if encoder not in ENCODERS:
        raise ValueError(f'encoder must be one of {ENCODERS}, got '
                         f'{encoder!r}.')
    dataset_cfg = cfg.train_dataloader.dataset.copy()
    dataset_cfg.pipeline = cfg.test_dataloader.dataset.pipeline
    dataset = DATASETS.build(dataset_cfg)
    loader = DataLoader(
        dataset, batch_size=batch_size, collate_fn=pseudo_collate)
    encode = None if encoder == 'frozen' else (
        lambda inputs: model.extract_feat(inputs)[-1])
    cache = extract_latents(model, loader, encode=encode)
    return cache.latents.cpu(), cache.labels.cpu()


@torch.no_grad()
def sample_generated_latents(model,
                             labels: torch.Tensor,
                             seed: int = 0,
                             chunk_size: int = 4096) -> torch.Tensor:
    """DDIM latents ``z^0 ~ p_theta(z0 | y)`` of the diffusion head.

    Args:
        model (GALDDCClassifier): The loaded model.
        labels (Tensor): Class of each latent, ``(M,)``.
        seed (int): Seed of the sampling noise. Defaults to 0.
        chunk_size (int): Latents per sampler call. Defaults to 4096.

    Returns:
        Tensor: Encoder-space latents ``(M, D)`` on the CPU, bounded as in
        training (the diffusion head's ``feature_clamp_max``).
    """
    device = model.geometry.prototypes.device
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = labels.to(device)
    out = [
        model.generate_latents(
            labels[i:i + chunk_size], generator=generator).float().cpu()
        for i in range(0, labels.numel(), chunk_size)
    ]
    return torch.cat(out)


def class_order_by_count(counts: Sequence[int]) -> np.ndarray:
    """Class indices sorted by training count, largest first (stable)."""
    counts = np.asarray(counts)
    return np.argsort(-counts, kind='stable')


def add_output_args(parser, default_out: str) -> None:
    """Add ``--out``, ``--format``, ``--dpi`` and ``--tensorboard``."""
    parser.add_argument(
        '--out',
        default=default_out,
        help='output file; its extension is replaced by each --format '
        f'(default: {default_out})')
    parser.add_argument(
        '--format',
        nargs='+',
        choices=FORMATS,
        default=['png'],
        help='file formats to write (default: png)')
    parser.add_argument(
        '--dpi', type=int, default=100, help='resolution of PNG files')
    parser.add_argument(
        '--tensorboard',
        metavar='DIR',
        help='also log the figure as an image to a TensorBoard event file '
        'in DIR (needs the tensorboard package)')


def save_figure(fig,
                out: str,
                formats: Sequence[str] = ('png', ),
                dpi: int = 100,
                tensorboard: Optional[str] = None,
                tag: str = 'figure') -> List[str]:
    """Write ``fig`` in each format (and to TensorBoard), then close it.

    Args:
        fig (Figure): The figure.
        out (str): Output path; its extension is replaced by each format.
        formats (Sequence[str]): Any of ``'png'``, ``'svg'``, ``'pdf'``.
            Defaults to ``('png', )``.
        dpi (int): Resolution of raster output. Defaults to 100.
        tensorboard (str, optional): A log dir to add the figure to as an
            image (``SummaryWriter.add_figure``). Defaults to None.
        tag (str): The TensorBoard tag. Defaults to ``'figure'``.

    Returns:
        list[str]: The written files.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f'Unknown figure format(s) {bad}; choose from '
                         f'{FORMATS}.')
    stem = osp.splitext(out)[0]
    folder = osp.dirname(osp.abspath(out))
    os.makedirs(folder, exist_ok=True)
    paths = []
    for fmt in formats:
        path = f'{stem}.{fmt}'
        # A fixed creation date keeps SVG/PDF output byte-stable between
        # runs (no diff noise in committed figures).
        metadata = {
            'svg': {'Date': None},
            'pdf': {'CreationDate': None}
        }.get(fmt)
        fig.savefig(path, dpi=dpi, bbox_inches='tight', metadata=metadata)
        paths.append(path)
    if tensorboard is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                '--tensorboard needs the tensorboard package: pip install '
                'tensorboard') from e
        writer = SummaryWriter(tensorboard)
        writer.add_figure(tag, fig, close=False)
        writer.close()
    plt.close(fig)
    return paths
