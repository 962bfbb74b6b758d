"""Conversion: trace a model, give every node a role, prepare the inference ANN, set thresholds,
build the SNN."""
