"""Sampling math: schedules, parameterizations, plans, guidance, steppers, seeded noise and the one loop.

Pure math: imports nothing else of vidiff. The public diffusers-named schedulers (configs, files,
the stateful ``step`` surface) that build plans from it live in :mod:`vidiff.schedulers`.
"""
