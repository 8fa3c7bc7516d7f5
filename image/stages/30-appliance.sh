#!/bin/sh
# In the image's chroot: the appliance's virtual environment with its pinned Python packages
# (pjsua2 comes from 40-pjproject.sh, not from PyPI), and the default hold music rendered once.
set -eu

app=/opt/centralka
python3 -m venv "$app/.venv"
# Every pinned package but the x86_64-only pjsua2 wheel.
grep -v '^pjsua2-python' "$app/requirements.txt" >/tmp/requirements-pi.txt
"$app/.venv/bin/pip" install --disable-pip-version-check -r /tmp/requirements-pi.txt
"$app/.venv/bin/pip" install --disable-pip-version-check --no-deps "$app"
"$app/.venv/bin/python" -m appliance.media.holdmusic "$app/appliance/data/hold_music.wav"
echo "30-appliance.sh: /opt/centralka/.venv"
