"""Sweeps of the class-imbalance study: grids as data (`grids`), the Ray Tune driver (`full_grid`),
MLflow tracking (`tracking`). `imbalance_core` stays a plain library; Ray and MLflow live here."""
