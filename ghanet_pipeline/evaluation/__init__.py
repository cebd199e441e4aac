"""Evaluation: survival metrics (c-index, Kaplan-Meier, log-rank: ``metrics``), evaluating a predictions
table (``evaluate``) and the report figures (``plots``).
"""
