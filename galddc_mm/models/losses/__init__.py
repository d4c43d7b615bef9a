# Copyright (c) galddc_mm contributors. All rights reserved.
from .calibrated_radius_loss import CalibratedRadiusLoss
from .feature_consistency_loss import FeatureConsistencyLoss
from .label_smooth_ce_loss import LabelSmoothCELoss
from .ldm_loss import LDMLoss
from .prototype_loss import PrototypeLoss
from .prototype_margin_loss import PrototypeMarginLoss
from .pseudo_latent_ce_loss import PseudoLatentCELoss

__all__ = [
    'LDMLoss', 'PrototypeLoss', 'CalibratedRadiusLoss', 'PrototypeMarginLoss',
    'FeatureConsistencyLoss', 'PseudoLatentCELoss', 'LabelSmoothCELoss'
]
