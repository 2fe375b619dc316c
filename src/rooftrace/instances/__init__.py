"""Probabilities to buildings: :func:`~rooftrace.instances.postprocess.postprocess` turns a model's
footprint, boundary and contact probabilities into one exact polygon per building (``watershed`` or
``seed``), with the settings ``rooftrace tune`` searches (``PostprocessSettings``);
:mod:`~rooftrace.instances.flood` floods the pieces of the mask that two seeds compete for.
"""
