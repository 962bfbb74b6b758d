"""The model zoo: builders of the ANNs to convert, and the shipped trained models."""
