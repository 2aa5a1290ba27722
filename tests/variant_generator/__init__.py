"""Tests of the variant generators (`variant_generator/`): builders and the profiler."""
