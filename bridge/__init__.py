"""leadbridge core: lead model, mapping, ledger, pipeline, worker, config and CLI.

Nothing in this package imports a vendor SDK; vendors live in ``connectors``.
"""

__version__ = "0.1.0"
