"""Benchmarks of the real daemon against a real Mosquitto and a local TLS+AUTH relay on loopback.

``make bench`` (= ``.venv/bin/python -m tests.bench``) runs them all and prints one table with
the machine they ran on; ``--quick`` is a short smoke run of everything. See README.md.

- `common`: the servers per scenario, the daemon config, /proc readings, results, the machine.
- `load`: publishers (in child processes, so the load generator does not share a GIL with the
  relay) and a paced in-process publisher that timestamps each message.
- `throughput`, `latency`, `storm`, `drain`, `memory`, `idle`, `startup`: one benchmark each.
- `baseline`: a bare aiosmtplib client through the same relay (the throughput run's yardstick).
- `profile`: ``python -m tests.bench.profile``, py-spy on the daemon during the end-to-end burst.
"""
