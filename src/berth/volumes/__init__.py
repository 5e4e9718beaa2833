"""Volume drivers: where a volume's data lives on the host (``store.LocalDriver``, Docker's ``local`` driver).

Imports: errors, kernel.
"""
