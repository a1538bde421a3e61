"""Benchmarks (`make bench`, `edge-vlm bench`): decode+bin, STTF vs dense, ANC, end to end.

:mod:`.all` (``bench_all``: every part, one dict), :mod:`.decode`, :mod:`.sttf` (with
:mod:`.sttf_timing` and :mod:`.engines`), :mod:`.anc`, :mod:`.e2e` (the node graph, run by the
ROS 2 workspace's ``edge_vlm_demo``), :mod:`.report` (``docs/benchmarks.md`` and ``.json``);
shared parts: :mod:`.common` (machine, timing, threads), :mod:`.streams` (event streams and
packets), :mod:`.recordings` (the simulated test set).
"""
