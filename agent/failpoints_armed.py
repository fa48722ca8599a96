"""Arms FAULTMAIL_FAILPOINTS: its presence, nothing in it.

It exists in the repository and in a development install, where the fault-injection suite makes
the daemon kill itself on purpose. The Debian package leaves it out (`packaging/pkgtool.py`,
DEV_ONLY), so on a gateway the variable is ignored with a warning (see agent/failpoints.py).
"""
