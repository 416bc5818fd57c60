"""Cross-site requests against a `--dev` admin REST API (issue 12 item 11): a web page on another site must not be
able to change state through the visitor's browser. Bodies must be `application/json` (a "simple" cross-site
`text/plain` POST needs no CORS preflight) and state-changing calls with a foreign `Origin` are refused; Google's
clients (no `Origin`, JSON bodies) and the dashboard (same origin) keep working.
"""

from __future__ import annotations

import json

import requests

EVIL = "http://evil.example"
LOCATION = "us-central1"


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def _registries(server, project: str) -> str:
    return f"{server.admin_url}/v1/projects/{project}/locations/{LOCATION}/registries"


def _status(response) -> str:
    return response.json().get("error", {}).get("status", "")


def test_text_plain_post_from_a_foreign_origin_creates_nothing(live_dev_server, project):
    s = _session()
    url = _registries(live_dev_server, project)
    body = json.dumps({"id": "csrf-registry"})

    r = s.post(url, data=body, headers={"Content-Type": "text/plain", "Origin": EVIL}, timeout=10)
    assert r.status_code == 403 and _status(r) == "PERMISSION_DENIED", r.text
    r = s.post(url, data=body, headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 400 and _status(r) == "INVALID_ARGUMENT", r.text
    assert "application/json" in r.json()["error"]["message"]
    r = s.post(url, data=body, headers={"Content-Type": "application/json", "Origin": EVIL}, timeout=10)
    assert r.status_code == 403 and _status(r) == "PERMISSION_DENIED", r.text
    r = s.post(url, data="id=csrf-registry", headers={"Content-Type": "application/x-www-form-urlencoded"},
               timeout=10)
    assert r.status_code == 400, r.text

    assert s.get(f"{url}/csrf-registry", timeout=10).status_code == 404, "a refused call created the registry"

    # The same call from the server's own origin (the dashboard) or without Origin (every API client) works.
    own = "http://" + live_dev_server.endpoints["admin"]
    r = s.post(url, data=body, headers={"Content-Type": "application/json; charset=utf-8", "Origin": own},
               timeout=10)
    assert r.status_code == 200, r.text
    # Reads are not state-changing: a foreign Origin may GET (the browser keeps the answer from the page).
    assert s.get(f"{url}/csrf-registry", headers={"Origin": EVIL}, timeout=10).status_code == 200
    # Deleting is state-changing, body or not.
    r = s.delete(f"{url}/csrf-registry", headers={"Origin": EVIL}, timeout=10)
    assert r.status_code == 403, r.text
    assert s.delete(f"{url}/csrf-registry", timeout=10).status_code == 200


def test_pubsub_and_provisioning_rest_are_guarded_too(live_dev_server, project):
    s = _session()
    topic = f"{live_dev_server.admin_url}/v1/projects/{project}/topics/csrf-topic"
    r = s.put(topic, data="{}", headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 400, r.text
    r = s.put(topic, json={}, headers={"Origin": EVIL}, timeout=10)
    assert r.status_code == 403, r.text
    assert s.get(topic, timeout=10).status_code == 404
    assert s.put(topic, json={}, timeout=10).status_code == 200
    r = s.post(f"{topic}:publish", data=json.dumps({"messages": [{"data": "aGk="}]}),
               headers={"Content-Type": "text/plain", "Origin": EVIL}, timeout=10)
    assert r.status_code == 403, r.text

    registries = _registries(live_dev_server, project)
    assert s.post(registries, json={"id": "prov-reg"}, timeout=10).status_code == 200
    r = s.post(f"{registries}/prov-reg/bootstraps", json={"id": "batch-1"}, headers={"Origin": EVIL}, timeout=10)
    assert r.status_code == 403, r.text
    r = s.post(f"{registries}/prov-reg/bootstraps", data=json.dumps({"id": "batch-1"}),
               headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 400, r.text
