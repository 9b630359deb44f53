"""Trained reference models: class-conditional digit generators and the judge that scores them.

Random weights say nothing about what speculation costs in quality, so the
benchmarks run on models trained here, on scikit-learn's bundled digits
(nothing is downloaded).  ``digits`` holds the data, ``judge`` the classifier
whose features give digits-FD, ``models`` the two generator architectures
(DiT with DDPM/DDIM, Flux with rectified flow), ``train`` the scripts that
produce the committed weights, ``store`` where those weights live.
"""
