"""Backbones giving the initial displacement: VFA (:mod:`~caio.backbone.vfa`) and the training-free
registration (:mod:`~caio.backbone.training_free`)."""
