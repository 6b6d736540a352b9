"""Policy: the rules file (allowlist, deny list, sandboxes, address classes) and the mining pool list.

rules.py parses and validates a rules file into an immutable Allowlist (allowlist.py, vectorised matching over the
model of model.py, with the syntax checks of syntax.py), cached by content for big files (cache.py); addrclass.py is
the shipped table of special address classes; pools.py the pool list. Nothing here reads a file at import time.
"""
