"""Evaluation: ANN and SNN accuracy per T with the measures, results records, reports."""
