"""The benchmark: our service beside a bare Starlette + asyncpg floor, on one machine.

`uv run python -m bench` runs it (`--quick` for the short run CI does); see docs/benchmarks.md.
"""
