"""Engine bundles: the compiled segments, their manifest, and a runtime that needs no model code."""
