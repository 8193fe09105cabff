"""Salesforce Platform Events sink: OAuth, mapping, sObject Collections publishing, the Sink itself.

``SalesforceSink`` is run by the shared :class:`~walbridge.sinks.runner.SinkRunner`;
``walbridge sink salesforce --config FILE`` is :func:`walbridge.sinks.salesforce.cli.salesforce`.
"""

from walbridge.sinks.salesforce.fields import DEFAULT_EVENT, DEFAULT_FIELDS
from walbridge.sinks.salesforce.sink import SalesforceSink

__all__ = ["DEFAULT_EVENT", "DEFAULT_FIELDS", "SalesforceSink"]
