# Ablation: GALD-DC without distribution calibration (lam = 1: tail classes
# keep their own observed radius as the target).
_base_ = ['../r20_digitslt.py']
model = dict(geometry=dict(lam=1.0))
