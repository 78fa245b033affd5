"""Contrast handling: the gate (same or cross contrast?), Brain-ID (any contrast -> T1-like), MIND-SSC features."""
