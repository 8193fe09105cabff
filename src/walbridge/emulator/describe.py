"""Describe results (``GET .../sobjects/<Event__e>/describe`` and ``.../sobjects/<Event__e>/``) of an event.

Contract: ``describe_event(definition)`` returns the subset of Salesforce's DescribeSObjectResult a client
needs: object flags (createable only: events are insert-only, not queryable) and every field with ``name``,
``label``, ``type`` (string, textarea, double, boolean, date, datetime, id/reference for system fields),
``length``, ``precision``, ``scale``, ``nillable``, ``defaultedOnCreate``, ``createable``, ``custom``.
"""

from __future__ import annotations

from typing import Any

from walbridge.emulator.metadata import EventDefinition, FieldDefinition

__all__ = ["describe_event", "object_info"]

_SOAP_TYPES = {
    "Text": ("string", "xsd:string"),
    "LongTextArea": ("textarea", "xsd:string"),
    "Number": ("double", "xsd:double"),
    "Checkbox": ("boolean", "xsd:boolean"),
    "Date": ("date", "xsd:date"),
    "DateTime": ("datetime", "xsd:dateTime"),
}
_SYSTEM = (
    {"name": "ReplayId", "label": "Replay ID", "type": "string", "soapType": "xsd:string", "length": 255},
    {
        "name": "CreatedDate",
        "label": "Created Date",
        "type": "datetime",
        "soapType": "xsd:dateTime",
        "length": 0,
    },
    {
        "name": "CreatedById",
        "label": "Created By ID",
        "type": "reference",
        "soapType": "tns:ID",
        "length": 18,
    },
    {"name": "EventUuid", "label": "Event UUID", "type": "string", "soapType": "xsd:string", "length": 36},
)


def object_info(definition: EventDefinition) -> dict[str, Any]:
    return {
        "name": definition.name,
        "label": definition.label,
        "labelPlural": definition.plural_label,
        "keyPrefix": "e01",
        "custom": True,
        "createable": True,
        "deletable": False,
        "updateable": False,
        "queryable": False,
        "retrieveable": False,
        "searchable": False,
        "triggerable": True,
        "urls": {
            "sobject": f"/services/data/v62.0/sobjects/{definition.name}",
            "describe": f"/services/data/v62.0/sobjects/{definition.name}/describe",
            "eventSchema": f"/services/data/v62.0/sobjects/{definition.name}/eventSchema",
        },
    }


def describe_event(definition: EventDefinition) -> dict[str, Any]:
    system = [
        {**f, "nillable": f["name"] != "ReplayId", "createable": False, "custom": False} for f in _SYSTEM
    ]
    return {
        **object_info(definition),
        "eventType": definition.event_type,
        "publishBehavior": definition.publish_behavior,
        "fields": system + [_field(f) for f in definition.fields],
    }


def _field(fdef: FieldDefinition) -> dict[str, Any]:
    kind, soap = _SOAP_TYPES[fdef.type]
    return {
        "name": fdef.name,
        "label": fdef.label,
        "type": kind,
        "soapType": soap,
        "length": fdef.length or 0,
        "precision": fdef.precision or 0,
        "scale": fdef.scale or 0,
        # As Salesforce reports them: a Checkbox is never null, and defaults (to false) on create.
        "nillable": not fdef.required and fdef.type != "Checkbox",
        "defaultedOnCreate": fdef.type == "Checkbox",
        "createable": True,
        "updateable": False,
        "custom": True,
    }
