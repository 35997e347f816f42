#!/usr/bin/env bash
# A throwaway certificate authority and a server certificate it signed, for loopback services
# (sourced, not run): the development ACME server (scripts/pebble.sh) and the benchmarks'
# proxies (bench/lib.sh).
#
#   source scripts/local-ca.sh
#   local_ca_and_leaf DIR CN DAYS   # in DIR: ca.key, ca.pem ("CN"), and leaf.key, leaf.pem for
#                                   # localhost and 127.0.0.1; ECDSA P-256, valid DAYS days

local_ca_and_leaf() {
  local dir=$1 cn=$2 days=$3
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
      -keyout ca.key -out ca.pem -subj "/CN=$cn" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout leaf.key -out leaf.csr -subj "/CN=localhost"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
      -extfile leaf.ext -out leaf.pem
  )
}
