"""Salesforce API emulator: OAuth token endpoint, the Platform Event publishing REST API and, on a port of
its own, the Pub/Sub API (gRPC, ``pubsub.py``) over the same org and event stream.

Follows the contract in the reference (token flows and their errors, single and collection publishing,
describe, limits, ``Sforce-Limit-Info``); event definitions come from the SFDX metadata in ``salesforce/``.
"""

from walbridge.emulator.auth import ConnectedApp
from walbridge.emulator.metadata import EventDefinition, FieldDefinition, load_definitions
from walbridge.emulator.server import DEFAULT_APP, EmulatorConfig, EmulatorServer

__all__ = [
    "DEFAULT_APP",
    "ConnectedApp",
    "EmulatorConfig",
    "EmulatorServer",
    "EventDefinition",
    "FieldDefinition",
    "load_definitions",
]
