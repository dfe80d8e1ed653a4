"""A local stand-in for the Hugging Face Hub's HTTP API, enough for `huggingface_hub` to create a
repository, commit files to it (inline, 'regular' uploads) and download them (`snapshot_download`,
`hf_hub_download`). Point HF_ENDPOINT at `url`; `downloads` records every file served."""

import base64
import hashlib
import http.server
import json
import re
import threading
from urllib.parse import unquote, urlparse


class HubEndpoint:
    def __init__(self):
        self.repos = {}  # (type, repo_id) -> {path: bytes}
        self.downloads = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body=b'', headers=(), content_type='application/json'):
                self.send_response(status)
                self.send_header('Content-Type', content_type)
                self.send_header('Content-Length', str(len(body)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(body)

            def _json(self, value, status=200):
                self._send(status, json.dumps(value).encode())

            def _body(self):
                return self.rfile.read(int(self.headers.get('Content-Length') or 0))

            def do_POST(self):
                path, body = urlparse(self.path).path, self._body()
                if path == '/api/repos/create':
                    req = json.loads(body)
                    kind = req.get('type') or 'model'
                    repo_id = f'{req["organization"]}/{req["name"]}'
                    hub.repos.setdefault((kind, repo_id), {})
                    prefix = '' if kind == 'model' else f'/{kind}s'
                    return self._json({'url': f'{hub.url}{prefix}/{repo_id}', 'name': repo_id})
                if path == '/api/validate-yaml':  # a card's metadata
                    return self._json({'errors': [], 'warnings': []})
                m = re.match(r'/api/(\w+)s/([^/]+/[^/]+)/(preupload|commit)/(.+)', path)
                if not m or (m[1], m[2]) not in hub.repos:
                    return self._json({'error': 'Repository not found'}, 404)
                files = hub.repos[(m[1], m[2])]
                if m[3] == 'preupload':
                    paths = [f['path'] for f in json.loads(body)['files']]
                    modes = [dict(path=p, uploadMode='regular', shouldIgnore=False) for p in paths]
                    return self._json({'files': modes})
                for line in body.splitlines():
                    item = json.loads(line)
                    if item['key'] == 'file':
                        files[item['value']['path']] = base64.b64decode(item['value']['content'])
                oid = hub.sha(files)
                return self._json({'commitUrl': f'{hub.url}/{m[2]}/commit/{oid}', 'commitOid': oid})

            def do_GET(self):
                path = unquote(urlparse(self.path).path)
                m = re.match(r'/api/(\w+)s/([^/]+/[^/]+)(/revision/[^/]+)?$', path)
                if m:
                    files = hub.repos.get((m[1], m[2]))
                    if files is None:
                        return self._json({'error': 'Repository not found'}, 404)
                    siblings = [{'rfilename': name} for name in sorted(files)]
                    return self._json({'id': m[2], 'sha': hub.sha(files), 'siblings': siblings,
                                       'private': False})  # fmt: skip
                m = re.match(r'/api/(\w+)s/([^/]+/[^/]+)/tree/', path)
                if m and (m[1], m[2]) in hub.repos:
                    files = hub.repos[(m[1], m[2])]
                    return self._json([
                        dict(type='file', path=name, size=len(data),
                             oid=hashlib.sha1(data).hexdigest())
                        for name, data in sorted(files.items())
                    ])  # fmt: skip
                m = re.match(r'/(?:(\w+)s/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)', path)
                files = hub.repos.get((m[1] or 'model', m[2])) if m else None
                if files is None or m[4] not in files:
                    headers = [('X-Error-Code', 'EntryNotFound' if files else 'RepoNotFound')]
                    return self._send(404, b'{}', headers)
                data = files[m[4]]
                if self.command == 'GET':
                    hub.downloads.append(m[4])
                etag = hashlib.sha256(data).hexdigest()
                self._send(200, data, [('X-Repo-Commit', hub.sha(files)), ('ETag', f'"{etag}"')],
                           'application/octet-stream')  # fmt: skip

            do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def sha(files):
        digest = hashlib.sha1()
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha1(files[name]).digest())
        return digest.hexdigest()

    def close(self):
        self.server.shutdown()
