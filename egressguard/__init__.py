"""egressguard: a network egress monitor for sandboxes.

Pipeline: capture -> decode -> flows -> (payload, detect) -> report. Importing the package compiles nothing.
"""
__version__ = "0.1.0"
