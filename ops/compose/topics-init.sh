#!/bin/sh
# docker compose one-shot (service topics-init): set the registry's global compatibility to
# BACKWARD, as `invsync stack up` does for the local stack, then create the catalogue's topics.
set -eu
python - <<'PY'
import json
import os
import urllib.request

url = os.environ["INVSYNC_SCHEMA_REGISTRY_URL"].rstrip("/") + "/config"
request = urllib.request.Request(
    url,
    data=json.dumps({"compatibility": "BACKWARD"}).encode(),
    method="PUT",
    headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
)
with urllib.request.urlopen(request, timeout=10) as response:
    print(f"registry compatibility: {json.loads(response.read())}")
PY
exec invsync topics create
