"""Weights: the folder lookup and manifest (:mod:`caio.weights.manifest`), downloads
(:mod:`caio.weights.fetch`) and strict checkpoint loading (:mod:`caio.weights.checkpoints`)."""
