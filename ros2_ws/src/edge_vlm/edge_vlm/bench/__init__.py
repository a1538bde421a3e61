"""Benchmarks (`make bench`): decode+bin, STTF vs dense, ANC, end to end."""
