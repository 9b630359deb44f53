"""The runtime: engines, the feature cache and forecaster, the scheduler, the Runner.

All state that lives across timesteps is owned here, by ``Runner`` and its
trajectories, never by module attributes (Dynamo would guard on them and
recompile every step).
"""
