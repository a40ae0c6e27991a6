"""Evaluation metrics: pure functions of predictions, labels, features and images."""
