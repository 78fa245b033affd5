"""Instance-optimisation refinement: the cascade, its networks, losses and pretraining."""
