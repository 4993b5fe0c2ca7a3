"""Sampling math: schedules, parameterizations, guidance, steppers and the one loop."""
