"""Simulation: the IF neuron (functional core and module), the plan of a network and its executors."""
