"""The SFDX metadata is well-formed and complete, and the field names used by the Apex code, the emulator and
walbridge's default mapping all exist in it."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from walbridge.emulator.metadata import load_definitions
from walbridge.sinks.salesforce.fields import DEFAULT_EVENT, DEFAULT_FIELDS

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "salesforce"
DEFAULT = PROJECT / "force-app" / "main" / "default"
NS = "{http://soap.sforce.com/2006/04/metadata}"
XML_FILES = sorted(PROJECT.rglob("*-meta.xml"))

# Elements each metadata type needs to deploy.
REQUIRED = {
    "CustomObject": ("label", "pluralLabel", "deploymentStatus"),
    "CustomField": ("fullName", "label", "type"),
    "ApexClass": ("apiVersion", "status"),
    "ApexTrigger": ("apiVersion", "status"),
    "PermissionSet": ("label",),
    "PlatformEventSubscriberConfig": ("batchSize", "masterLabel", "platformEventConsumer"),
}
LENGTH_TYPES = {"Text", "LongTextArea"}


def _root(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(NS + tag)
    return None if child is None else (child.text or "").strip()


def test_there_is_metadata() -> None:
    assert len(XML_FILES) >= 20


@pytest.mark.parametrize("path", XML_FILES, ids=lambda p: p.name)
def test_metadata_xml_is_well_formed_and_complete(path: Path) -> None:
    root = _root(path)
    kind = root.tag.removeprefix(NS)
    assert root.tag.startswith(NS), f"{path.name}: wrong namespace"
    assert kind in REQUIRED, f"{path.name}: unexpected root {kind}"
    required = REQUIRED[kind]
    if kind == "CustomObject" and _text(root, "customSettingsType"):
        required = ("label", "visibility")  # a custom setting has no plural label or deployment status
    missing = [tag for tag in required if not _text(root, tag)]
    assert not missing, f"{path.name}: missing {missing}"
    if kind == "CustomField":
        assert _text(root, "fullName") == path.name.removesuffix(".field-meta.xml")
        ftype = _text(root, "type")
        if ftype in LENGTH_TYPES:
            assert _text(root, "length"), f"{path.name}: {ftype} needs a length"
        if ftype == "Number":
            assert _text(root, "precision") and _text(root, "scale") is not None
        if ftype == "Picklist":
            assert root.find(f"{NS}valueSet/{NS}valueSetDefinition/{NS}value") is not None
    if kind == "CustomObject" and path.parent.name.endswith("__c") and not _text(root, "customSettingsType"):
        assert _text(root, "sharingModel") and root.find(NS + "nameField") is not None


def test_every_apex_source_has_its_meta_file() -> None:
    for source in [*DEFAULT.rglob("*.cls"), *DEFAULT.rglob("*.trigger")]:
        assert source.with_name(source.name + "-meta.xml").is_file(), source.name


def test_sfdx_project_json() -> None:
    project = json.loads((PROJECT / "sfdx-project.json").read_text())
    assert project["packageDirectories"] == [{"path": "force-app", "default": True}]
    assert re.fullmatch(r"\d+\.0", project["sourceApiVersion"])


def test_platform_event_definition() -> None:
    event = _root(DEFAULT / "objects" / DEFAULT_EVENT / f"{DEFAULT_EVENT}.object-meta.xml")
    assert _text(event, "eventType") == "HighVolume"
    assert _text(event, "publishBehavior") == "PublishAfterCommit"
    fields = {f.name: f for f in load_definitions(PROJECT / "force-app")[DEFAULT_EVENT].fields}
    assert fields["Payload__c"].type == "LongTextArea" and fields["Payload__c"].length == 131072
    assert fields["Operation__c"].type == "Text" and fields["Operation__c"].length == 20
    assert fields["Timestamp__c"].type == "DateTime"
    assert (fields["Kafka_Offset__c"].precision, fields["Kafka_Offset__c"].scale) == (18, 0)
    assert fields["Event_Key__c"].required


def _object_fields(obj: str) -> set[str]:
    names = {p.name.removesuffix(".field-meta.xml") for p in (DEFAULT / "objects" / obj / "fields").glob("*")}
    return {n.lower() for n in names}


_OBJECTS = r"(Account|Contact|Integration_Log__c|PostgreSQL_Data__e|Walbridge_Settings__c)"


def _apex_field_refs() -> dict[str, set[str]]:
    """obj -> custom fields the Apex code uses as ``Obj.Field__c``, ``Field__c =`` inside ``new Obj(...)``,
    or ``var.Field__c`` on a variable declared with one of these types (ambiguous names are skipped)."""
    refs: dict[str, set[str]] = {}
    for path in [*DEFAULT.rglob("*.cls"), *DEFAULT.rglob("*.trigger")]:
        source = path.read_text()
        for obj, field in re.findall(rf"\b{_OBJECTS}\.(\w+__c)\b", source):
            refs.setdefault(obj, set()).add(field)
        for obj, args in re.findall(rf"new {_OBJECTS}\s*\(([^;]*?)\)", source, re.S):
            refs.setdefault(obj, set()).update(re.findall(r"(\w+__c)\s*=", args))
        types: dict[str, set[str]] = {}
        for obj, var in re.findall(rf"\b{_OBJECTS}\s+(\w+)\s*[=:;),]", source):
            types.setdefault(var, set()).add(obj)
        for var, objs in types.items():
            if len(objs) == 1:
                refs.setdefault(objs.pop(), set()).update(re.findall(rf"\b{var}\.(\w+__c)\b", source))
    return refs


def test_apex_uses_only_defined_fields() -> None:
    refs = _apex_field_refs()
    assert refs["PostgreSQL_Data__e"] >= {"Payload__c", "Event_Key__c", "Source_Table__c", "Timestamp__c"}
    assert "External_Id__c" in refs["Account"]
    for obj, fields in refs.items():
        unknown = {f for f in fields if f.lower() not in _object_fields(obj)}
        assert not unknown, f"Apex uses {obj} fields missing from the metadata: {sorted(unknown)}"


def test_default_mapping_fields_exist_in_metadata_and_emulator() -> None:
    definition = load_definitions(PROJECT / "force-app")[DEFAULT_EVENT]
    metadata_fields = _object_fields(DEFAULT_EVENT)
    for name in DEFAULT_FIELDS:
        assert name.lower() in metadata_fields, name
        assert definition.lookup(name) is not None and definition.lookup(name).name == name
    required = {f.name for f in definition.required_fields}
    assert required <= set(DEFAULT_FIELDS), "the default mapping must fill every required field"


@pytest.mark.parametrize("obj", ["Account", "Contact"])
def test_external_ids_are_case_sensitive_and_unique(obj: str) -> None:
    field = _root(DEFAULT / "objects" / obj / "fields" / "External_Id__c.field-meta.xml")
    assert (_text(field, "externalId"), _text(field, "unique"), _text(field, "caseSensitive")) == (
        "true",
        "true",
        "true",
    )


@pytest.mark.parametrize("obj", [DEFAULT_EVENT, "Account", "Contact", "Integration_Log__c"])
def test_source_position_is_fixed_width_text(obj: str) -> None:
    field = _root(DEFAULT / "objects" / obj / "fields" / "Source_Position__c.field-meta.xml")
    assert (_text(field, "type"), _text(field, "length")) == ("Text", "20")
    assert _text(field, "required") == "false", "events from an older sink without a position still apply"


def test_subscriber_config_names_a_user_and_a_batch_size_that_fits() -> None:
    (path,) = DEFAULT.glob("platformEventSubscriberConfigs/*-meta.xml")
    config = _root(path)
    assert _text(config, "platformEventConsumer") == "PostgreSQLDataEventTrigger"
    assert _text(config, "user")
    payload = load_definitions(PROJECT / "force-app")[DEFAULT_EVENT].lookup("Payload__c")
    assert payload is not None
    # Worst case: every payload at its maximum length must fit the asynchronous heap (12 MB) with room.
    assert int(_text(config, "batchSize") or 0) * payload.length <= 12_000_000 * 0.6


def test_publisher_permission_set_grants_read_with_create() -> None:
    root = _root(DEFAULT / "permissionsets" / "Walbridge_Event_Publisher.permissionset-meta.xml")
    (event,) = [p for p in root.findall(NS + "objectPermissions") if _text(p, "object") == DEFAULT_EVENT]
    assert (_text(event, "allowCreate"), _text(event, "allowRead")) == ("true", "true")
    assert _text(event, "allowEdit") == _text(event, "allowDelete") == "false"
