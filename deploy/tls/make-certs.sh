#!/usr/bin/env bash
# A local certificate authority and the certificates of deploy/docker-compose.tls.yml, made with openssl.
#   deploy/tls/make-certs.sh [DIR]          (default: deploy/tls/certs, git-ignored)
# For a test or staging stack: in production, take the certificates from your own CA. Existing files are
# kept (delete DIR to start over), so re-running it does not invalidate certificates already deployed.
#
#   ca.pem, ca.key                   the CA (ca.key never leaves this directory)
#   kafka.pem                        Kafka's PEM keystore: private key + certificate (kafka, localhost)
#   kafka-admin.pem                  client key + certificate (CN=kafka-admin) for the broker's mutual-TLS
#                                    listener (healthcheck, SCRAM user setup)
#   kafka-admin.properties           Kafka tools' client settings for that listener
#   postgres-source.crt/.key, postgres-dest.crt/.key   the databases' server certificates
set -euo pipefail
DIR="${1:-$(dirname "$0")/certs}"
DAYS="${CERT_DAYS:-825}"
mkdir -p "$DIR"
chmod 700 "$DIR"
cd "$DIR"

if [ ! -f ca.pem ]; then
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 3650 -keyout ca.key -out ca.pem \
        -subj "/CN=walbridge local CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 600 ca.key
fi

# issue NAME USAGE SAN...: NAME.key (P-256, PKCS#8, unencrypted) and NAME.crt signed by the CA.
issue() {
    local name=$1 usage=$2 san="" host
    shift 2
    [ -f "$name.crt" ] && return 0
    for host in "$@"; do san="${san:+$san,}DNS:$host"; done
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$usage"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days "$DAYS" \
        -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

issue kafka serverAuth,clientAuth kafka localhost
issue kafka-admin clientAuth
issue postgres-source serverAuth postgres-source localhost
issue postgres-dest serverAuth postgres-dest localhost

# Kafka reads a PEM keystore: the private key followed by its certificate.
cat kafka.key kafka.crt > kafka.pem
cat kafka-admin.key kafka-admin.crt > kafka-admin.pem
cat > kafka-admin.properties <<PROPS
security.protocol=SSL
ssl.truststore.type=PEM
ssl.truststore.location=/run/secrets/ca.pem
ssl.keystore.type=PEM
ssl.keystore.location=/run/secrets/kafka-admin.pem
PROPS

# Compose mounts secrets with these modes and owners on the host: the containers' users (postgres, Kafka's
# appuser, walbridge's 10001) differ from yours, so they must be readable; the directory itself is 0700.
# PostgreSQL insists on a key only its user can read: the overlay copies it into place at start.
chmod 644 ./*.pem ./*.crt ./*.key kafka-admin.properties
chmod 600 ca.key
echo "certificates in $(pwd)"
