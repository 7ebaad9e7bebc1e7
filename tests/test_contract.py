"""The wire contract is defined once: the SDK's copy is the same file, it needs no torch,
and the service, the SDK and the dashboard use its statuses and event kinds."""

from __future__ import annotations

import re
import subprocess
import sys

from sdpo_core import contract
from tests.conftest import REPO

SERVER = REPO / "sdpo_core" / "contract.py"
SDK = REPO / "clients" / "python" / "sdpo_client" / "contract.py"


def test_sdk_copies_are_identical() -> None:
    """The contract and the benchmark-record converters: one file each, the SDK a copy."""
    assert SDK.read_bytes() == SERVER.read_bytes(), "cp sdpo_core/contract.py " + str(SDK)
    records = REPO / "sdpo_core" / "records.py"
    sdk_records = REPO / "clients" / "python" / "sdpo_client" / "records.py"
    assert sdk_records.read_bytes() == records.read_bytes(), "cp sdpo_core/records.py ..."
    imports = set(re.findall(r"^(?:from|import) ([\w.]+)", records.read_text(), re.M))
    assert imports <= {
        "__future__",
        "base64",
        "io",
        "json",
        "pickle",
        "zlib",
        "collections.abc",
        "typing",
    }, imports


def test_contract_needs_only_pydantic() -> None:
    imports = set(re.findall(r"^(?:from|import) (\w+)", SERVER.read_text(), re.M))
    assert imports <= {"__future__", "typing", "pydantic"}, imports
    code = "import sys, sdpo_core.contract; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_service_and_sdk_use_it() -> None:
    import sdpo_client.models as sdk

    import service.models as api
    import service.store as store

    assert api.Status is contract.Status
    assert store.TERMINAL == contract.TERMINAL_STATUSES
    assert store.TERMINAL_EVENTS == contract.TERMINAL_EVENTS
    assert set(sdk.EVENT_KINDS) == set(contract.EVENT_KINDS)
    event = sdk.parse_event("1-0", "cancelled", "{}")
    assert isinstance(event, sdk.contract.CancelledPayload) and event.terminal


def test_dashboard_agrees() -> None:
    js = (REPO / "service" / "ui" / "static" / "dashboard.js").read_text()
    terminal = re.search(r"const TERMINAL = new Set\(\[([^\]]*)\]\)", js)
    assert terminal, "dashboard.js: no TERMINAL set"
    assert set(re.findall(r'"(\w+)"', terminal[1])) == contract.TERMINAL_STATUSES
    handled = set(re.findall(r'case "(\w+)"', js))
    assert handled and handled <= set(contract.EVENT_KINDS), handled - set(contract.EVENT_KINDS)


def test_sdk_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, sdpo_client, sdpo_client.problems\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sdpo_core', 'service', 'torch')]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO / "clients" / "python")
