"""Helpers of the tests: small data sets, engine cases, the weights recipe, run-loop drivers."""
