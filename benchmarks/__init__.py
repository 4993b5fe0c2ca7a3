"""Speed and memory benchmarks of vidiff next to diffusers (``python -m benchmarks.run``); never part of the tests."""
