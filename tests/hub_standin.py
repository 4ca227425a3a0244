"""A local stand-in for the Hugging Face Hub endpoints that ``create_repo`` and ``upload_folder`` use.

It serves, on ``127.0.0.1`` (no network), what huggingface_hub 2.x sends (see its ``hf_api.create_repo``,
``_commit_api._fetch_upload_modes`` / ``_send_commit`` and ``lfs.post_lfs_batch_info`` / ``lfs_upload``):

- ``POST /api/repos/create``: JSON ``{name, organization, visibility?, type?}``; 409 if the repo exists.
- ``POST /api/validate-yaml``: the README's metadata, checked as the Hub checks a model card's
  (see :func:`card_metadata_errors`); 400 with the errors.
- ``POST /api/models/{ns}/{name}/preupload/{rev}``: says per file whether it goes as a regular git blob
  (base64 inside the commit) or through LFS (here: names ending in ``lfs_suffixes``, or files of at
  least ``lfs_min_size`` bytes).
- ``POST /{ns}/{name}.git/info/lfs/objects/batch``: an upload action (and a verify action) per object.
- ``PUT /lfs-upload/{oid}``: the object's bytes (stored only if their SHA-256 is ``oid``).
- ``POST /lfs-verify``: 200 when the object was stored.
- ``POST /api/models/{ns}/{name}/commit/{rev}``: the NDJSON commit (header, ``file`` with base64
  content, ``lfsFile`` naming a stored object, deletions); the repo's files are updated.
- ``GET /api/models/{ns}/{name}[/revision/{rev}]``, ``GET /api/models/{ns}/{name}/tree/{rev}`` and
  ``HEAD``/``GET /{ns}/{name}/resolve/{rev}/{path}``: what ``snapshot_download`` reads to fetch the repo back.

Every request is recorded (method, path, query, JSON or NDJSON body, whether it carried the token).
Requests without ``Authorization: Bearer <token>`` get 401; anything else gets 404, and is recorded, so
a test can see a request it did not expect.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Request:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorized: bool
    body: Any  # parsed JSON, a list of NDJSON items, or raw bytes (LFS uploads)


@dataclass
class Repo:
    """A repository of the stand-in: its visibility and its files after the commits so far."""

    private: bool | None
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)


class HubStandIn:
    """Start with ``with HubStandIn(token="...") as hub:``; ``hub.url`` is the ``HF_ENDPOINT`` to use."""

    def __init__(self, token: str = "hf_standin_token", lfs_suffixes: tuple[str, ...] = (".safetensors", ".png", ".bin"),
                 lfs_min_size: int = 10 * 1024 * 1024):
        self.token = token
        self.lfs_suffixes, self.lfs_min_size = lfs_suffixes, lfs_min_size
        self.requests: list[Request] = []
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # oid -> bytes
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def calls(self, method: str, prefix: str) -> list[Request]:
        """The recorded requests of ``method`` whose path starts with ``prefix``."""
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    # ------------------------------------------------------------ serving
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    return self.rfile.read(n)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return b""

            def _reply(self, status: int, payload: Any = None) -> None:
                data = json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 400:
                    self.send_header("X-Error-Message", str((payload or {}).get("error", "")))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                raw = self._body()
                authorized = self.headers.get("Authorization") == f"Bearer {hub.token}"
                body: Any = raw
                if "ndjson" in (self.headers.get("Content-Type") or ""):
                    body = [json.loads(line) for line in raw.splitlines() if line.strip()]
                elif raw and "json" in (self.headers.get("Content-Type") or ""):
                    body = json.loads(raw)
                with hub._lock:
                    hub.requests.append(Request(method, url.path, parse_qs(url.query), authorized, body))
                    if not authorized and not url.path.startswith("/lfs-"):
                        return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                    status, payload = hub._route(method, url.path, body)
                self._reply(status, payload)

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._serve("PUT")

            def do_GET(self) -> None:  # noqa: N802
                if not self._download(head=False):
                    self._serve("GET")

            def do_HEAD(self) -> None:  # noqa: N802
                if not self._download(head=True):
                    self._reply(404, {"error": "not found"})

            def _download(self, head: bool) -> bool:
                """``/{ns}/{name}/resolve/{rev}/{path}``: a file of the repo (what hf_hub_download reads)."""
                url = urlparse(self.path)
                parts = unquote(url.path).strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return False
                repo_id, path = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
                with hub._lock:
                    hub.requests.append(Request("HEAD" if head else "GET", url.path, parse_qs(url.query),
                                                self.headers.get("Authorization") == f"Bearer {hub.token}", b""))
                    repo = hub.repos.get(repo_id)
                    data = repo.files.get(path) if repo is not None else None
                    sha = repo.commits[-1]["oid"] if repo is not None and repo.commits else None
                if data is None:
                    self._reply(404, {"error": f"{path} not found in {repo_id}"})
                    return True
                self.send_response(200)
                self.send_header("X-Repo-Commit", sha or "0" * 40)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                return True

        return Handler

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/api/repos/create":
            repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            vis = body.get("visibility")
            self.repos[repo_id] = Repo(private=None if vis is None else vis == "private")
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if method == "POST" and path == "/api/validate-yaml":
            errors = card_metadata_errors(body.get("content", ""))
            return (400, {"errors": [{"message": e} for e in errors]}) if errors else (200, {"warnings": []})
        if method == "POST" and len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
            repo_id = f"{parts[2]}/{parts[3]}"
            if repo_id not in self.repos:
                return 404, {"error": f"Repository {repo_id} not found"}
            files = [{"path": f["path"], "uploadMode": self._mode(f["path"], f["size"]), "shouldIgnore": False,
                      "oid": None} for f in body["files"]]
            return 200, {"files": files, "commitOid": "0" * 40}
        if method == "POST" and len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
            return self._commit(f"{parts[2]}/{parts[3]}", body)
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            objects = []
            for o in body["objects"]:
                entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
                if o["oid"] not in self.lfs:
                    entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}", "header": {}},
                                        "verify": {"href": f"{self.url}/lfs-verify", "header": {}}}
                objects.append(entry)
            return 200, {"transfer": "basic", "objects": objects}
        if method == "PUT" and len(parts) == 2 and parts[0] == "lfs-upload":
            if hashlib.sha256(body).hexdigest() != parts[1]:
                return 400, {"error": "uploaded bytes do not match the oid"}
            self.lfs[parts[1]] = bytes(body)
            return 200, {}
        if method == "POST" and path == "/lfs-verify":
            ok = body.get("oid") in self.lfs and len(self.lfs[body["oid"]]) == body.get("size")
            return (200, {}) if ok else (404, {"error": "object not uploaded"})
        if method == "GET" and len(parts) >= 4 and parts[:2] == ["api", "models"]:  # repo_info (snapshot_download)
            repo_id = f"{parts[2]}/{parts[3]}"
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": f"Repository {repo_id} not found"}
            sha = repo.commits[-1]["oid"] if repo.commits else "0" * 40
            if len(parts) >= 6 and parts[4] == "tree":  # list_repo_tree: every file (recursive), one page
                return 200, [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                             for f, b in sorted(repo.files.items())]
            return 200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": bool(repo.private),
                         "siblings": [{"rfilename": f} for f in sorted(repo.files)]}
        return 404, {"error": f"the stand-in does not serve {method} {path}"}

    def _mode(self, path: str, size: int) -> str:
        return "lfs" if size and (path.endswith(self.lfs_suffixes) or size >= self.lfs_min_size) else "regular"

    def _commit(self, repo_id: str, items: list[dict[str, Any]]) -> tuple[int, Any]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": f"Repository {repo_id} not found"}
        header = next((i["value"] for i in items if i["key"] == "header"), None)
        if header is None:
            return 400, {"error": "commit without a header line"}
        changed: dict[str, bytes | None] = {}
        for item in items:
            key, value = item["key"], item["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return 400, {"error": f"unknown encoding {value.get('encoding')!r}"}
                changed[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = self.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    return 400, {"error": f"LFS object {value['oid']} of {value['path']} was not uploaded"}
                changed[value["path"]] = data
            elif key in ("deletedFile", "deletedFolder"):
                changed[value["path"]] = None
            elif key != "header":
                return 400, {"error": f"unknown commit operation {key!r}"}
        for path, data in changed.items():
            if data is None:
                repo.files.pop(path, None)
            else:
                repo.files[path] = data
        oid = hashlib.sha1(json.dumps([header, sorted(changed)]).encode() + str(len(repo.commits)).encode()).hexdigest()
        repo.commits.append({"summary": header.get("summary"), "files": sorted(changed), "oid": oid})
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}


PIPELINE_TAGS = ("text-generation", "image-classification", "zero-shot-image-classification", "fill-mask",
                 "text-classification", "token-classification", "feature-extraction", "other")


def card_metadata_errors(content: str) -> list[str]:
    """What the Hub would refuse in a model card's YAML metadata: a block that does not parse or is not a
    mapping, tags that are not strings, a ``base_model`` that is not a repo id, an unknown
    ``pipeline_tag``, and a ``model-index`` without a name, task type, dataset name and type, or a metric
    type and numeric value."""
    import re

    import yaml

    if not content.startswith("---\n") or "\n---\n" not in content[4:]:
        return ["no YAML metadata block (--- ... ---) at the top of README.md"]
    try:
        meta = yaml.safe_load(content[4:].split("\n---\n", 1)[0])
    except yaml.YAMLError as e:
        return [f"metadata is not valid YAML: {e}"]
    if not isinstance(meta, dict):
        return ["metadata must be a mapping"]
    errors = []
    tags = meta.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        errors.append('"tags" must be a list of strings')
    bases = meta.get("base_model", [])
    for base in ([bases] if isinstance(bases, str) else bases if isinstance(bases, list) else [None]):
        if not isinstance(base, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", base):
            errors.append(f'"base_model" must be a repo id (namespace/name), got {base!r}')
    if "pipeline_tag" in meta and meta["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" {meta["pipeline_tag"]!r} is not a known pipeline')
    if "library_name" in meta and not isinstance(meta["library_name"], str):
        errors.append('"library_name" must be a string')
    index = meta.get("model-index", [])
    if not isinstance(index, list):
        return [*errors, '"model-index" must be a list']
    for model in index:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append('"model-index[].name" must be a string')
            continue
        for result in model.get("results") or [None]:
            if not isinstance(result, dict) or not isinstance((result.get("task") or {}).get("type"), str):
                errors.append('"model-index[].results[].task.type" is required')
                continue
            dataset = result.get("dataset") or {}
            if not isinstance(dataset.get("type"), str) or not isinstance(dataset.get("name"), str):
                errors.append('"model-index[].results[].dataset" needs "type" and "name"')
            for metric in result.get("metrics") or [None]:
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or \
                        not isinstance(metric.get("value"), (int, float)):
                    errors.append('"model-index[].results[].metrics[]" needs "type" and a numeric "value"')
    return errors
