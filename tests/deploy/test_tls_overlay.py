"""deploy/docker-compose.tls.yml and deploy/tls/make-certs.sh, checked offline.

The certificate script runs with openssl and yields certificates that verify against its CA for the host
names the services use, and that serve a real TLS handshake; the overlay mounts every certificate it names,
leaves no plaintext Kafka client listener, and the walbridge configs load with the overlay's environment
(SASL_SSL to Kafka, sslmode=verify-full to both databases).
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from compose_files import BASE, TLS, example_env, merged_service, secret_targets
from deploy_tools import DEPLOY, load_yaml
from psycopg.conninfo import conninfo_to_dict

from walbridge.config import load_settings

OVERLAY = load_yaml(TLS)
SCRIPT = DEPLOY / "tls" / "make-certs.sh"
SERVER_NAMES = {"kafka": "kafka", "postgres-source": "postgres-source", "postgres-dest": "postgres-dest"}
WALBRIDGE_CONFIGS = {
    "walbridge-setup": "capture.yaml",
    "capture": "capture.yaml",
    "sink-postgres": "sink-postgres.yaml",
    "sink-salesforce": "sink-salesforce.yaml",
    "verify": "sink-postgres.yaml",
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out_dir = tmp_path_factory.mktemp("tls") / "certs"
    out = subprocess.run(["bash", str(SCRIPT), str(out_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out_dir


def _env() -> dict[str, str]:
    return {**example_env(), "WALBRIDGE_KAFKA_PASSWORD": "0123456789abcdef"}


def _service(name: str) -> dict[str, Any]:
    return merged_service(name, _env(), BASE, TLS)


# --------------------------------------------------------------------------- certificates


def test_the_script_makes_every_file_the_overlay_mounts(certs: Path) -> None:
    for name, secret in OVERLAY["secrets"].items():
        if "file" in secret:
            assert secret["file"].startswith("./tls/certs/"), name
            assert (certs / Path(secret["file"]).name).is_file(), f"make-certs.sh does not make {name}"


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_server_certificates_verify_for_their_host_name(certs: Path, name: str) -> None:
    argv = ["openssl", "verify", "-CAfile", str(certs / "ca.pem"), "-purpose", "sslserver"]
    out = subprocess.run([*argv, "-verify_hostname", SERVER_NAMES[name], str(certs / f"{name}.crt")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and ": OK" in out.stdout, out.stdout + out.stderr
    wrong = subprocess.run([*argv, "-verify_hostname", "elsewhere", str(certs / f"{name}.crt")],
                           capture_output=True, text=True)
    assert wrong.returncode != 0


def test_the_admin_certificate_is_a_client_certificate(certs: Path) -> None:
    argv = ["openssl", "verify", "-CAfile", str(certs / "ca.pem"), "-purpose", "sslclient"]
    out = subprocess.run([*argv, str(certs / "kafka-admin.crt")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_tls_handshake_succeeds_with_hostname_verification(certs: Path) -> None:
    # Kafka's PEM keystore (key + certificate in one file) on a real TLS server; a client that trusts only
    # the CA and checks the name, as librdkafka and libpq (verify-full) do.
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs / "kafka.pem")
    client_ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="kafka") as tls,
        ):
            assert tls.recv(5) == b"hello"
            assert tls.getpeercert()["subject"] == ((("commonName", "kafka"),),)
        thread.join(timeout=10)


# --------------------------------------------------------------------------- the overlay


def test_services_mount_every_secret_they_name() -> None:
    for name in OVERLAY["services"]:
        service = _service(name)
        mounted = secret_targets(service)
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            assert source in OVERLAY["secrets"], f"{name}: undeclared secret {source}"
        text = str(service.get("environment", {})) + str(service.get("command", "")) + str(
            service.get("entrypoint", "")
        ) + str(service.get("healthcheck", ""))
        for path in set(re.findall(r"/run/secrets/([\w.-]+)", text)):
            assert path in mounted, f"{name} uses /run/secrets/{path} but does not mount it"


def test_kafka_has_no_plaintext_client_listener() -> None:
    env = _service("kafka")["environment"]
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = [entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")]
    for listener in listeners:
        if listener != env["KAFKA_CONTROLLER_LISTENER_NAMES"]:
            assert protocols[listener] in ("SSL", "SASL_SSL"), listener
    advertised = [entry.split("://")[0] for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(",")]
    assert set(advertised) <= set(listeners)


@pytest.mark.parametrize("name", sorted(WALBRIDGE_CONFIGS))
def test_configs_load_with_the_overlay_environment(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service(name)
    for key, value in service["environment"].items():
        monkeypatch.setenv(key, value)
    path = DEPLOY / "config" / WALBRIDGE_CONFIGS[name]
    settings = load_settings(path)
    assert "ca.pem" in secret_targets(service)
    dsns = [getattr(sink, "dsn", None) for sink in settings.sinks]
    dsns = [dsn for dsn in [*dsns, settings.source.dsn if "source" in load_yaml(path) else None] if dsn]
    assert dsns or name == "sink-salesforce"
    for dsn in dsns:
        params = conninfo_to_dict(dsn)
        assert params["sslmode"] == "verify-full" and params["sslrootcert"] == "/run/secrets/ca.pem", name
    if "kafka-users" in service.get("depends_on", {}):
        options = settings.kafka.client_options()
        assert settings.kafka.bootstrap_servers == "kafka:19094"
        assert options["security.protocol"] == "SASL_SSL" and options["sasl.mechanism"] == "SCRAM-SHA-512"
        assert options["sasl.password"] == "0123456789abcdef"
        assert options["ssl.ca.location"] == "/run/secrets/ca.pem"
        assert options["client.id"].startswith("walbridge-"), "the overlay must add to the options"


def test_the_walbridge_processes_wait_for_their_kafka_user() -> None:
    for name in ("capture", "sink-postgres", "sink-salesforce"):
        assert _service(name)["depends_on"]["kafka-users"] == {"condition": "service_completed_successfully"}
