"""Benchmarks of medkg-pdf against a simulated vLLM server (`make bench` -> bench/RESULTS.md).

Every figure is a ratio against a baseline measured in the same run on the same machine
(bare httpx client, raw PyMuPDF loop, the simulator's own ideal), never an absolute time.
"""
