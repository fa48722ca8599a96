"""Test harness: real servers on loopback for the integration tests and ``make demo``.

- `ports`: free loopback ports.
- `pki`: a throw-away CA (trustme) issuing server and client certificates.
- `mosquitto`: the real Mosquitto broker as a subprocess, per test.
- `publisher`: paho-mqtt QoS 1 publisher and persistent-session subscriber.
- `relay`: an aiosmtpd submission relay with recording and fault injection.
- `daemon`: the faultmail daemon as a subprocess (sd_notify readiness) and its TOML config.
- `firmware`: loads firmware-sim/firmware_sim.py.
- `dns`: a small authoritative DNS server (dnspython) for doctor's DKIM/SPF/DMARC checks.
- `demo`: ``python -m tests.harness.demo``.
"""
