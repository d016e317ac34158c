"""Benchmarks for retune (outside `make test`): `make bench` / `make bench-quick`, see README.md here."""
