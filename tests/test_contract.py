"""The service contract: both backends implement it, declare what they can do, and the front
ends read those declarations instead of probing the services."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from convtune.local.local_service import LocalService
from convtune.openai_backend import OpenAIService
from convtune.service.contract import (
    Capabilities,
    Chat,
    Files,
    FineTuningService,
    Jobs,
    Models,
    Unsupported,
)

from .conftest import ROOT

SRC = ROOT / "src" / "convtune"
RESOURCES = {"files": Files, "jobs": Jobs, "models": Models, "chat": Chat}


def test_both_backends_implement_every_resource_with_one_signature(tmp_path):
    """`service.files`, `.jobs`, `.models`, `.chat`: each backend's classes implement the
    contract's, with the contract's signatures (a front end written once works with both)."""
    services = [
        LocalService(),
        OpenAIService(api_key="sk-test", base_url="http://127.0.0.1:9/v1", home=tmp_path),
    ]
    for service in services:
        assert isinstance(service, FineTuningService) and not inspect.isabstract(type(service))
        assert isinstance(service.capabilities, Capabilities)
        assert service.name in ("local", "openai")
        for name, contract in RESOURCES.items():
            resource = getattr(service, name)
            assert isinstance(resource, contract) and not inspect.isabstract(type(resource))
            assert resource.service is service
            for method, declared in vars(contract).items():
                if method.startswith("_") or not callable(declared):
                    continue
                mine = inspect.signature(getattr(type(resource), method)).parameters
                want = inspect.signature(declared).parameters
                assert list(mine)[: len(want)] == list(want), f"{name}.{method}"


def test_the_contract_lists_each_resource_once():
    """The four resources are the service's only operations: nothing of OpenAI's API is left
    on the service itself, where it would be implemented twice."""
    operations = {
        n for n, v in vars(FineTuningService).items() if callable(v) and not n.startswith("_")
    }
    assert operations == {"ownership", "notices", "close"}
    assert set(FineTuningService.__annotations__) >= set(RESOURCES)


def test_what_a_backend_cannot_do_is_declared_and_refused_in_one_line(tmp_path):
    service = OpenAIService(api_key="sk-test", base_url="http://127.0.0.1:9/v1", home=tmp_path)
    assert not service.capabilities.numbered_events and not service.capabilities.file_paths
    with pytest.raises(Unsupported, match="the openai backend has no numbered events"):
        service.jobs.events_since("ftjob-abc")
    with pytest.raises(Unsupported, match="keeps no files on this machine"):
        service.files.path("file-abc")
    local = LocalService()
    assert local.capabilities.numbered_events and local.ownership() is None
    assert local.notices() == [] and local.base_url is None


def test_the_wind_down_is_a_notice_of_openai_itself(tmp_path):
    assert OpenAIService(api_key="sk-test", home=tmp_path).notices()
    assert not OpenAIService(
        api_key="sk-test", base_url="http://127.0.0.1:8000/v1", home=tmp_path
    ).notices()


def _probes(path: Path) -> list[str]:
    """getattr/hasattr calls whose object is a service (`service`, `ctx.service`...)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
            and "service" in ast.unparse(node.args[0])
        ):
            found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_front_ends_never_probe_a_service():
    fronts = [
        *SRC.glob("cli/*.py"),
        *SRC.glob("server/*.py"),
        SRC / "service/follow.py",
        SRC / "metrics/job_metrics.py",
    ]
    assert [p for path in fronts for p in _probes(path)] == []


def test_imports_run_downward():
    """Front ends -> services -> store/trainer/models -> dataset -> objects: a worker never
    imports its parent's service, the server never the local backend's internals, the dataset
    nothing above it."""

    def imports(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(("." * node.level) + node.module)
        return names

    worker = imports(SRC / "local" / "worker.py")
    assert not any("local_service" in m for m in worker)
    for path in SRC.glob("server/*.py"):
        assert not any(m.startswith("..local") for m in imports(path)), path.name
    for path in SRC.glob("dataset/*.py"):
        above = ("..local", "..server", "..cli", "..openai_backend", "..service", "..metrics")
        assert not any(m.startswith(above) for m in imports(path)), path.name


def test_no_source_file_is_over_450_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert long == {}
