"""Judging: the prompts, the constitution, the judge's calls (option probabilities, ratings,
juries), calibration and the judge's diagnostics. Imports plumbing and engines."""
