"""Simulation: the IF neuron (functional core and module), the plan of a network, its executor
and the step-by-step oracle."""
