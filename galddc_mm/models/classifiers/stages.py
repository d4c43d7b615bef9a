# Copyright (c) galddc_mm contributors. All rights reserved.
"""The vocabulary of GALD-DC's stages, defined once.

Stages run in the order of :data:`STAGES`; the fine-tuning stage has a mode
(:data:`FINETUNE_MODES`); each stage trains some of the model's parts
(:data:`PARTS`, one optimiser wrapper each), given by :func:`trainable_parts`.
The classifier, the training loop, the optimiser constructor and the hooks
import these names rather than spelling them again.
"""
from typing import Dict, Optional, Tuple

REPRESENTATION = 'representation'
DIFFUSION = 'diffusion'
FINETUNE = 'finetune'
#: The stages, in the order they run.
STAGES = (REPRESENTATION, DIFFUSION, FINETUNE)

STABLE = 'stable'
HYBRID = 'hybrid'
#: ``stable``: E frozen, G trains; ``hybrid``: E and G train.
FINETUNE_MODES = (STABLE, HYBRID)

#: Optimiser-wrapper names: encoder E (backbone + neck), classifier G
#: (the cls head), diffusion head theta.
PARTS = ('encoder', 'head', 'diffusion')
#: The classifier's children behind each part.
PART_CHILDREN: Dict[str, Tuple[str, ...]] = dict(
    encoder=('backbone', 'neck'), head=('head', ),
    diffusion=('diffusion_head', ))

_STAGE_PARTS: Dict[Tuple[str, Optional[str]], Tuple[str, ...]] = {
    (REPRESENTATION, None): ('encoder', 'head'),
    (DIFFUSION, None): ('diffusion', ),
    (FINETUNE, STABLE): ('head', ),
    (FINETUNE, HYBRID): ('encoder', 'head'),
}


def trainable_parts(stage: str, mode: Optional[str] = None) -> tuple:
    """The parts a stage trains.

    Args:
        stage (str): One of :data:`STAGES`.
        mode (str, optional): One of :data:`FINETUNE_MODES` for the
            fine-tuning stage; ignored for the others. Defaults to None.

    Returns:
        tuple[str]: Part names, a subset of :data:`PARTS`.
    """
    key = (stage, mode if stage == FINETUNE else None)
    if key not in _STAGE_PARTS:
        raise ValueError(
            f'Unknown stage {stage!r} (mode {mode!r}); stages are {STAGES} '
            f'and finetune modes {FINETUNE_MODES}.')
    return _STAGE_PARTS[key]
