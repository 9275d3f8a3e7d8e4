"""Building blocks of the class-imbalance study (Buda, Maki & Mazurowski, 2018).

A plain library: no Ray, no MLflow. One trial is `imbalance_core.trial.run_trial(config) -> dict`.
"""
__version__ = "0.1.0"
