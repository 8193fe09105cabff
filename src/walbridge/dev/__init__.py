"""Development tools, not the runtime: the embedded stack (PostgreSQL, broker) and the supervision of its
processes, the demo, the sample schemas and the real-Debezium runner.

Only the commands that need them import these modules (``walbridge demo``, ``walbridge devstack``), tests
and benchmarks; ``capture`` and the sinks never do. Most need the ``embedded`` extra (``debezium.py``: the
``debezium`` extra).
"""
