"""Building blocks of the class-imbalance study (Buda, Maki & Mazurowski, 2018).

A plain library: no Ray, no MLflow. One trial is `imbalance_core.trial.run_trial(config) -> NetworkResult`
(`imbalance_core.result`; `.to_dict()` is the plain result dict).
"""
__version__ = "0.1.0"
