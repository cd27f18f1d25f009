"""Tooling that drives the product from outside: the demo, the benchmark, the polling baseline, local
infrastructure and the marketplace simulators. It may import every service; no service imports it."""
