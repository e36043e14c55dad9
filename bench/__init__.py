"""Benchmarks and static checks for tritonconv."""
