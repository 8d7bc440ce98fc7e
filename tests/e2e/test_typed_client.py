"""The OpenAPI document as its ecosystem uses it: it validates, and a typed client generated
from it by a real generator compiles and works against the running service.

For each service, started as deployed (`serve`, production defaults): its /openapi.json passes
openapi-spec-validator; openapi-typescript turns it into types; `client.ts` (openapi-fetch
on those types) is type-checked by tsc --strict, which must also refuse the misuses marked
@ts-expect-error; the compiled client then signs up, and creates, reads, updates, lists and
deletes a todo on the service, and reads typed error bodies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from tests.conftest import SERVICES, TEST_SECRET
from tests.e2e.conftest import Processes
from tests.npm import installed, node_missing

PROJECT = Path(__file__).resolve().parent / "typed_client"
NODE_MISSING = "Node.js is missing (node and npm must be on PATH): the typed client test needs it"


def run(args: list[str], cwd: Path, **env: str) -> str:
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def typed_client_project() -> Path:
    if node_missing():
        pytest.fail(NODE_MISSING, pytrace=False)
    return installed(PROJECT)


@pytest.mark.parametrize("service", [s.name for s in SERVICES])
async def test_a_generated_typed_client_compiles_and_works(
    service: str,
    full_db: str,
    processes: Processes,
    typed_client_project: Path,
    tmp_path: Path,
) -> None:
    # Production defaults: only the two required settings (rate limits on, mail off).
    served = await processes.serve(
        service, full_db, ENVIRONMENT="production", AUTH_SECRET=TEST_SECRET
    )
    await served.wait_ready()
    assert served.base_url is not None
    async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200, r.text
    document: dict[str, Any] = r.json()
    validate(document)  # raises with the offending path if the document is not valid OpenAPI

    work = tmp_path / "client"
    work.mkdir()
    for name in ("client.ts", "tsconfig.json", "package.json"):
        shutil.copy(typed_client_project / name, work / name)
    (work / "node_modules").symlink_to(typed_client_project / "node_modules")
    (work / "openapi.json").write_text(json.dumps(document))
    bin_dir = typed_client_project / "node_modules" / ".bin"
    # --default-non-nullable false: by default openapi-typescript makes a property with a
    # default required, even in a request body (its issue #2489); a client may omit them.
    generate = [str(bin_dir / "openapi-typescript"), "openapi.json", "-o", "api.d.ts"]
    run([*generate, "--default-non-nullable", "false"], work)
    run([str(bin_dir / "tsc"), "-p", "tsconfig.json"], work)  # strict; no emit on error

    out = run(["node", "out/client.js"], work, BASE_URL=served.base_url)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["todoUserId"] == result["userId"]
    assert result["completed"] is True
    assert result["titles"] == ["from a generated client"]
    assert result["removed"] == 204
    assert result["missing"] == [404, "TODO_NOT_FOUND"]
    assert result["anonymous"] == [401, "UNAUTHORIZED"]
