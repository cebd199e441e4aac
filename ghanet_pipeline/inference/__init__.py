"""Slide-only inference: ensemble arithmetic (`ensemble`), loading a training run's fold models
(`loading`), per-case prediction (`predict`) and heatmaps (`heatmaps`)."""
