"""The default Platform Event and the fields walbridge's Salesforce sink sends by default.

Contract: ``DEFAULT_FIELDS`` lists every custom field of ``DEFAULT_EVENT`` that the default mapping fills;
a test checks each exists in the SFDX metadata (``salesforce/force-app``) and in the emulator's definition.
"""

from __future__ import annotations

__all__ = ["DEFAULT_EVENT", "DEFAULT_FIELDS", "KEY_FIELDS"]

DEFAULT_EVENT = "PostgreSQL_Data__e"
DEFAULT_FIELDS: tuple[str, ...] = (
    "Source_Table__c",
    "Operation__c",
    "Record_Id__c",
    "Payload__c",
    "Timestamp__c",
    "Schema_Version__c",
    "Kafka_Partition__c",
    "Kafka_Offset__c",
    "Event_Key__c",
    "Source_Position__c",
)

KEY_FIELDS: frozenset[str] = frozenset({"Record_Id__c", "Event_Key__c"})
"""Default fields that identify a row or an event: never truncated (an over-long one is refused)."""
