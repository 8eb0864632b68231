#!/usr/bin/env bash
# Makes the certificates for a TLS cluster of `troupe node`s:
#
#   bash scripts/make-cluster-certs.sh DIR NODE [NODE...]
#
# DIR/ca.pem + DIR/ca.key   the cluster CA (made only if missing, so running
#                           the script again to add a node reuses it)
# DIR/NODE.pem + NODE.key   one certificate and key per node name, signed by
#                           the CA (EC P-256, serverAuth + clientAuth); a
#                           node that has them already keeps them
#
# Every node (and every `troupe run --cluster` client) needs its own
# certificate and key and the CA file: peers verify each other's certificate
# against the CA on both sides. Keep ca.key off the nodes.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: make-cluster-certs.sh DIR NODE [NODE...]

Makes DIR/ca.pem and DIR/ca.key (the cluster CA, only if they are missing)
and, for each NODE, DIR/NODE.pem and DIR/NODE.key signed by that CA.
A NODE name may hold letters, digits, '.', '_' and '-'.
EOF
  exit 2
}

if [[ $# -lt 2 ]]; then
  usage
fi
case "$1" in -h | --help) usage ;; esac
dir=$1
shift
for name in "$@"; do
  if [[ ! $name =~ ^[A-Za-z0-9._-]+$ || $name == ca || $name == .* ]]; then
    echo "error: bad node name '$name' (letters, digits, '.', '_', '-'; not 'ca')" >&2
    exit 2
  fi
done
command -v openssl >/dev/null || {
  echo "error: openssl is not installed" >&2
  exit 2
}

mkdir -p "$dir"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [[ -f $dir/ca.pem && -f $dir/ca.key ]]; then
  echo "using the existing cluster CA $dir/ca.pem" >&2
elif [[ -e $dir/ca.pem || -e $dir/ca.key ]]; then
  echo "error: $dir holds only one of ca.pem and ca.key; move it away or restore the other" >&2
  exit 2
else
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -sha256 -days 3650 -subj "/CN=troupe cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>"$tmp/log" || {
    cat "$tmp/log" >&2
    exit 1
  }
  mv "$tmp/ca.key" "$dir/ca.key"
  mv "$tmp/ca.pem" "$dir/ca.pem"
  chmod 600 "$dir/ca.key"
  chmod 644 "$dir/ca.pem"
  echo "made the cluster CA $dir/ca.pem (its key $dir/ca.key: keep it safe)" >&2
fi

cat >"$tmp/ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
EOF

for name in "$@"; do
  if [[ -e $dir/$name.pem || -e $dir/$name.key ]]; then
    echo "keeping the existing $dir/$name.pem and $dir/$name.key (delete them to make new ones)" >&2
    continue
  fi
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$name" -keyout "$tmp/$name.key" -out "$tmp/$name.csr" \
    2>"$tmp/log" || {
    cat "$tmp/log" >&2
    exit 1
  }
  openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 825 \
    -extfile "$tmp/ext" -out "$tmp/$name.pem" 2>"$tmp/log" || {
    cat "$tmp/log" >&2
    exit 1
  }
  openssl verify -CAfile "$dir/ca.pem" "$tmp/$name.pem" >/dev/null
  mv "$tmp/$name.key" "$dir/$name.key"
  mv "$tmp/$name.pem" "$dir/$name.pem"
  chmod 600 "$dir/$name.key"
  chmod 644 "$dir/$name.pem"
  echo "made $dir/$name.pem and $dir/$name.key" >&2
done

abs=$(cd "$dir" && pwd)
echo "Start each node with its own certificate and key and the CA file:"
for name in "$@"; do
  echo "  troupe node --name $name --tls-cert $abs/$name.pem --tls-key $abs/$name.key --tls-ca $abs/ca.pem ..."
done
echo "troupe run --cluster HOST:PORT takes the same --tls-cert/--tls-key/--tls-ca"
echo "options (give the client a certificate of its own: add a name here for it)."
echo "Copy ca.pem and a node's own .pem/.key to it; ca.key stays here."
