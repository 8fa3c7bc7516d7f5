#!/bin/sh
# First boot of a freshly flashed box (centralka-firstboot.service, once): what must differ
# from box to box is made here, never baked into the image.
#
#  - the setup code the admin types into the web UI's first-boot page (no default password);
#    shown on the console's login screen and blinked by the status LED on request (hold the
#    button 10 s); the web UI removes it once the box is set up;
#  - the web UI's TLS certificate (self-signed, for this box's name);
#  - the secret Kamailio signs its digest nonces with (the desk phones' passwords are made per
#    phone by `centralka phones add`).
#
# ROOT (default /) lets the tests run it in a folder. It runs once (the marker
# .firstboot-done on the data partition); run again, it changes nothing that exists.
set -eu

ROOT="${ROOT:-}"
DATA="$ROOT/var/lib/centralka"
OWNER="${CENTRALKA_USER:-centralka}"

log() { echo "centralka-firstboot: $*"; }

if [ -e "$DATA/.firstboot-done" ]; then
  log "done before (the box was set up on its first boot)"
  exit 0
fi

own() {
  # Files for the core (group centralka may read); skipped where the user does not exist (tests).
  if id "$OWNER" >/dev/null 2>&1; then
    chown "$OWNER:$OWNER" "$@"
  fi
}

mkdir -p "$DATA/tls" "$DATA/kamailio"
chmod 0750 "$DATA" "$DATA/tls" "$DATA/kamailio"

if [ ! -s "$DATA/setup-code" ]; then
  # Six digits from the kernel's random source; leading zeros kept (digits, not a number).
  code=$(od -An -N8 -tu8 /dev/urandom | tr -dc '0-9' | tail -c 6)
  while [ "${#code}" -lt 6 ]; do code="0$code"; done
  umask 027
  printf '%s\n' "$code" >"$DATA/setup-code.tmp"
  mv "$DATA/setup-code.tmp" "$DATA/setup-code"
  own "$DATA/setup-code"
  log "setup code made"
fi
code=$(cat "$DATA/setup-code")

if [ ! -s "$DATA/tls/web.key" ] || [ ! -s "$DATA/tls/web.crt" ]; then
  name=$(cat "$ROOT/etc/hostname" 2>/dev/null || echo centralka)
  umask 077
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$name" \
    -addext "subjectAltName=DNS:$name,DNS:$name.local" \
    -keyout "$DATA/tls/web.key.tmp" -out "$DATA/tls/web.crt.tmp" 2>/dev/null
  mv "$DATA/tls/web.key.tmp" "$DATA/tls/web.key"
  mv "$DATA/tls/web.crt.tmp" "$DATA/tls/web.crt"
  chmod 0640 "$DATA/tls/web.key"
  chmod 0644 "$DATA/tls/web.crt"
  own "$DATA/tls/web.key" "$DATA/tls/web.crt"
  log "TLS certificate made for $name"
fi

if [ ! -s "$DATA/kamailio/auth.secret" ]; then
  umask 077
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DATA/kamailio/auth.secret"
  own "$DATA/kamailio/auth.secret"
  log "registrar secret made"
fi

# On the console's login screen until the box is set up (the web UI removes both).
mkdir -p "$ROOT/etc/issue.d"
printf 'Centralka: kod konfiguracji / setup code: %s\n\n' "$code" >"$ROOT/etc/issue.d/centralka.issue"
log "setup code on the console (/etc/issue.d/centralka.issue)"
touch "$DATA/.firstboot-done"
