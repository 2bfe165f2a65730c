"""Training: optimizer groups, callbacks, batch handling and the run driver behind ``train.py``."""
