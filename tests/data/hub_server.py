"""A loopback stand-in for the Hugging Face hub: what the real `hf_hub_download` and `get_hf_file_metadata` ask of
it, so the tests of `pgolf data fineweb` run the client's own download code (pointed here with `HF_ENDPOINT`).

`HEAD` and `GET /datasets/<owner>/<name>/resolve/<revision>/<path>` answer, as the hub does, with the commit
(`X-Repo-Commit`, which the client requires) and an `ETag`: the git blob sha1 for files kept in git, the sha256 for
LFS files (here `.bin` and `.model`), which also get `X-Linked-Etag` and `X-Linked-Size` (the hub answers those
with a redirect to its CDN carrying the same headers; here the file comes at once). Missing repos, revisions
and files are 404s with the `X-Error-Code` the client turns into its `...NotFoundError`s. `Range: bytes=N-` gets a
206: the client's resume of a dropped transfer.

Other URLs (the client also asks for `/api/agent-harnesses` once a day) are plain 404s.

Faults the tests set: `cut[path] = ("eof", n)` ends the next GET of `path` after n bytes as a clean end of a body of
no declared length (the client sees it only by its size check against `X-Linked-Size`, and fails at once);
`("drop", n)` declares the full `Content-Length` and closes after n bytes (a dropped connection: the client pauses
1 s and asks again, with a Range request from what it has kept, a multiple of its 10 MiB chunk). Paths in `corrupt`
are served with one byte changed, under the true sha256.
"""

from __future__ import annotations

import hashlib
import json
import select
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

LFS = (".bin", ".model")


def commit_of(repo_id: str) -> str:
    """The one commit of a served repo: 40 hex digits, as the client checks."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


class Hub:
    """`repos`: {repo id: {path in the repo: bytes}}; `requests` logs (method, path, Range header) of each call."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.head = {repo_id: commit_of(repo_id) for repo_id in repos}  # the commit "main" resolves to
        self.history: dict[str, dict[str, dict[str, bytes]]] = {}  # repo id -> {earlier commit: its files}
        self.cut: dict[str, tuple[str, int]] = {}
        self.corrupt: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Hub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def advance(self, repo_id: str, files: dict[str, bytes], commit: str) -> None:
        """A new commit of `repo_id` becomes "main"; the one before stays reachable by its hash."""
        self.history.setdefault(repo_id, {})[self.head[repo_id]] = self.repos[repo_id]
        self.repos[repo_id], self.head[repo_id] = files, commit

    def gets(self) -> list[str]:
        """The paths fetched with GET, in order."""
        return [path for method, path, _ in self.requests if method == "GET"]


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet

    def answer(self, body: bool) -> None:
        hub: Hub = self.server.hub  # type: ignore[attr-defined]
        _, kind, owner, name, verb, revision, path = (unquote(self.path).split("/", 6) + [""] * 7)[:7]
        if (kind, verb) != ("datasets", "resolve"):  # the client's other calls (a daily /api/agent-harnesses)
            return self.error(404, "NotFound", None)
        hub.requests.append((self.command, path, self.headers.get("Range")))
        repo_id = f"{owner}/{name}"
        if repo_id not in hub.repos:
            return self.error(404, "RepoNotFound", None)
        head = hub.head[repo_id]
        commit = head if revision == "main" else revision
        files = hub.repos[repo_id] if commit == head else hub.history.get(repo_id, {}).get(commit)
        if files is None:
            return self.error(404, "RevisionNotFound", head)
        if path not in files:
            return self.error(404, "EntryNotFound", commit)
        data = files[path]
        lfs = path.endswith(LFS)
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if path in hub.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        start = int(self.headers.get("Range", "bytes=0-")[len("bytes=") : -1])  # only "bytes=N-", the client's resume
        how, cut = hub.cut.pop(path, ("", None)) if body else ("", None)
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{etag}"')
        if lfs:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if how != "eof":
            self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if body:
            self.wfile.write(data[start:cut])
        self.close_connection = True

    def error(self, status: int, code: str, commit: str | None) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()


# Forks one child per command; the child takes the command's environment, then runs the CLI. pgolf and torch are
# imported once, here; huggingface_hub is not (it is imported by the download code, in the child, after the env).
FORK_SERVER = """
import json, os, sys, traceback
import pgolf_core.cli
assert "huggingface_hub" not in sys.modules
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.clear()
        os.environ.update(job["env"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        try:
            code = pgolf_core.cli.main(job["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Cli:
    """Runs `pgolf ARGV` as a user's shell would: a new process with the given environment, in which
    `huggingface_hub` is imported fresh (it reads `HF_ENDPOINT` and `HF_HOME` when imported). On Linux the processes
    are forked from one that has imported pgolf already, sparing each run the ~1.2 s of importing torch; elsewhere
    (fork is unsafe once torch is loaded on macOS, absent on Windows) each is a new interpreter."""

    def __init__(self) -> None:
        self.server: subprocess.Popen[str] | None = None
        if sys.platform == "linux":
            command = [sys.executable, "-c", FORK_SERVER]
            self.server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(
        self, argv: list[str], env: dict[str, str], logs: Path, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        if self.server is None:
            command = [
                sys.executable,
                "-c",
                "import sys; from pgolf_core.cli import main; sys.exit(main(sys.argv[1:]))",
            ]
            return subprocess.run([*command, *argv], env=env, capture_output=True, text=True, timeout=timeout)
        logs.mkdir(parents=True, exist_ok=True)
        out, err = logs / "stdout.txt", logs / "stderr.txt"
        assert self.server.stdin and self.server.stdout
        self.server.stdin.write(json.dumps({"argv": argv, "env": env, "stdout": str(out), "stderr": str(err)}) + "\n")
        self.server.stdin.flush()
        if not select.select([self.server.stdout], [], [], timeout)[0]:
            self.close()
            raise TimeoutError(f"pgolf {' '.join(argv)} ran over {timeout} s")
        code = int(self.server.stdout.readline())
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())

    def close(self) -> None:
        if self.server is not None:
            with self.server:  # on leaving: its pipes closed, then waited for
                self.server.kill()
