"""Platform event definitions read from SFDX source metadata.

Contract: ``load_definitions(dir)`` reads every ``objects/<Name>__e/`` folder under an SFDX package
directory (``force-app`` or any folder containing ``objects/``) and returns ``{api_name: EventDefinition}``.
Only the field types platform events allow (Text, LongTextArea, Number, Checkbox, Date, DateTime) are
accepted; anything else raises ``ConfigError``, as a deploy would fail. Field lookups are case-insensitive,
as Salesforce's REST API is. The repository's ``salesforce/force-app`` is the default source; the
``WALBRIDGE_SF_METADATA`` environment variable or an explicit path overrides it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from walbridge.errors import ConfigError

__all__ = [
    "METADATA_ENV",
    "SYSTEM_FIELDS",
    "Access",
    "EventDefinition",
    "FieldDefinition",
    "default_metadata_dir",
    "load_access",
    "load_definitions",
]

METADATA_ENV = "WALBRIDGE_SF_METADATA"
_NS = "{http://soap.sforce.com/2006/04/metadata}"
_EVENT_FIELD_TYPES = frozenset({"Text", "LongTextArea", "Number", "Checkbox", "Date", "DateTime"})
_LENGTH_BOUNDS = {"Text": (1, 255), "LongTextArea": (256, 131_072)}
"""What the Metadata API accepts for a field's ``length``."""
# Standard fields every event carries; set by the platform, never by the publisher.
SYSTEM_FIELDS = ("ReplayId", "CreatedDate", "CreatedById", "EventUuid")


@dataclass(frozen=True)
class FieldDefinition:
    """One custom field of an event, as declared in its ``.field-meta.xml``."""

    name: str
    label: str
    type: str
    required: bool = False
    length: int | None = None
    precision: int | None = None
    scale: int | None = None


@dataclass(frozen=True)
class EventDefinition:
    """A platform event (``*__e``) and its custom fields."""

    name: str
    label: str
    plural_label: str
    event_type: str
    publish_behavior: str
    fields: tuple[FieldDefinition, ...]
    _by_lower: dict[str, FieldDefinition] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_lower.update({f.name.lower(): f for f in self.fields})

    def lookup(self, name: str) -> FieldDefinition | None:
        """The field called ``name`` (any case), or None."""
        return self._by_lower.get(name.lower())

    @property
    def required_fields(self) -> tuple[FieldDefinition, ...]:
        return tuple(f for f in self.fields if f.required)


def default_metadata_dir() -> Path:
    """``$WALBRIDGE_SF_METADATA``, else the SFDX metadata shipped in the package (``sfdx/``: in a checkout,
    a link to the repository's ``salesforce/force-app``)."""
    env = os.environ.get(METADATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "sfdx"


def load_definitions(source: Path | str | None = None) -> dict[str, EventDefinition]:
    """Every platform event under ``source`` (default: ``default_metadata_dir()``), keyed by API name."""
    root = Path(source) if source is not None else default_metadata_dir()
    if not root.is_dir():
        raise ConfigError(
            f"Salesforce metadata directory not found: {root} (set {METADATA_ENV} or pass a path)"
        )
    events = {}
    for object_dir in sorted(root.rglob("objects/*__e")):
        if object_dir.is_dir():
            definition = _load_event(object_dir)
            events[definition.name] = definition
    if not events:
        raise ConfigError(f"no platform event (objects/*__e) under {root}")
    return events


@dataclass(frozen=True, slots=True)
class Access:
    """What the integration user may do with an event object (Read: see it at all; Create: publish)."""

    read: bool = False
    create: bool = False


def load_access(source: Path | str | None = None) -> dict[str, Access] | None:
    """``{event api name (lower case): Access}`` granted by the permission sets under ``source`` (the
    emulator's integration user holds all of them), or None when the metadata has no permission set (then
    nothing is enforced)."""
    root = Path(source) if source is not None else default_metadata_dir()
    files = sorted(root.rglob("permissionsets/*.permissionset-meta.xml"))
    if not files:
        return None
    access: dict[str, Access] = {}
    for path in files:
        for grant in _parse(path).iter(_NS + "objectPermissions"):
            name = (_text(grant, "object") or "").lower()
            old = access.get(name, Access())
            access[name] = Access(
                old.read or _text(grant, "allowRead") == "true",
                old.create or _text(grant, "allowCreate") == "true",
            )
    return access


def _load_event(object_dir: Path) -> EventDefinition:
    name = object_dir.name
    meta = object_dir / f"{name}.object-meta.xml"
    if not meta.is_file():
        raise ConfigError(f"{meta} is missing")
    obj = _parse(meta)
    fields = tuple(_load_field(p) for p in sorted((object_dir / "fields").glob("*.field-meta.xml")))
    return EventDefinition(
        name=name,
        label=_text(obj, "label") or name,
        plural_label=_text(obj, "pluralLabel") or name,
        event_type=_text(obj, "eventType") or "HighVolume",
        publish_behavior=_text(obj, "publishBehavior") or "PublishImmediately",
        fields=fields,
    )


def _load_field(path: Path) -> FieldDefinition:
    node = _parse(path)
    name = _text(node, "fullName") or path.name.removesuffix(".field-meta.xml")
    ftype = _text(node, "type")
    if ftype not in _EVENT_FIELD_TYPES:
        raise ConfigError(f"{path}: field type {ftype!r} is not allowed on a platform event")
    length = _int(node, "length")
    bounds = _LENGTH_BOUNDS.get(ftype)
    if bounds is not None and (length is None or not bounds[0] <= length <= bounds[1]):
        raise ConfigError(
            f"{path}: a {ftype} field's length must be {bounds[0]} to {bounds[1]:,} (found {length}); "
            "a deploy to Salesforce would fail"
        )
    return FieldDefinition(
        name=name,
        label=_text(node, "label") or name,
        type=ftype,
        required=_text(node, "required") == "true",
        length=length,
        precision=_int(node, "precision"),
        scale=_int(node, "scale"),
    )


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ConfigError(f"{path}: not well-formed XML: {exc}") from exc


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(_NS + tag)
    return child.text.strip() if child is not None and child.text else None


def _int(node: ET.Element, tag: str) -> int | None:
    value = _text(node, tag)
    return int(value) if value is not None else None
