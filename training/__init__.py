"""Training side of hemoseg-edge: Keras model, data, augmentation, training, evaluation, export.

Depends on ``hemoseg_edge`` (for the one preprocessing truth and the metrics); the runtime never
imports this package.
"""
