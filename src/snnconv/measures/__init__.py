"""Measures of a converted network: layer-wise error split, synaptic operations and energy,
shift sweep."""
