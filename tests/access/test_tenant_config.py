"""``[tenants]`` in flux.toml: a header or a function of the request, checked at start; a
tenant is printable text of bounded length."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from flux._errors import ConfigError
from flux.runtime._tenants import MAX_LENGTH, TenantRefused, load_tenants


def request(**headers: str) -> SimpleNamespace:
    return SimpleNamespace(headers=headers, host="acme.shop.test", path="/signup")


def test_the_tenant_from_a_header(tmp_path: Path) -> None:
    policy = load_tenants(tmp_path, {"tenants": {"header": "X-Tenant-ID"}})
    assert policy.header == "x-tenant-id"
    assert policy.resolve(request(**{"x-tenant-id": "acme"})) == "acme"
    assert policy.resolve(request()) is None
    assert load_tenants(tmp_path, {}).resolve(request(**{"x-tenant-id": "acme"})) is None
    required = load_tenants(tmp_path, {"tenants": {"header": "x-tenant-id", "required": True}})
    with pytest.raises(TenantRefused, match="needs a tenant, and the x-tenant-id header"):
        required.resolve(request())
    for bad in ("x" * (MAX_LENGTH + 1), "a\nb", "a\x00b"):
        with pytest.raises(TenantRefused) as refused:
            policy.resolve(request(**{"x-tenant-id": bad}))
        assert refused.value.status == 400


def test_the_tenant_from_a_function_of_the_request(tmp_path: Path) -> None:
    (tmp_path / "tenancy.py").write_text(
        "def tenant_of(request):\n"
        "    return request.host.split('.')[0] if request.path != '/boom' else 1 / 0\n"
        "def wrong(request):\n"
        "    return 42\n")
    policy = load_tenants(tmp_path, {"tenants": {"from": "tenancy:tenant_of"}})
    assert policy.resolve(request()) == "acme"
    with pytest.raises(TenantRefused) as failed:
        policy.resolve(SimpleNamespace(headers={}, host="x", path="/boom"))
    assert failed.value.status == 500 and "ZeroDivisionError" in failed.value.message
    with pytest.raises(TenantRefused, match="returned int"):
        load_tenants(tmp_path, {"tenants": {"from": "tenancy:wrong"}}).resolve(request())


@pytest.mark.parametrize(("section", "message"), [
    ({"header": "x", "from": "a:b"}, "header or from, not both"),
    ({"from": "nomodule:f"}, "there is no nomodule.py"),
    ({"from": "tenancy"}, '"module:function"'),
    ({"from": "tenancy:missing"}, "has no function missing"),
    ({"header": ""}, "must be a header name"),
    ({"required": "yes", "header": "x"}, "true or false"),
    ({"required": True}, "needs tenants.header or tenants.from"),
    ({"hedaer": "x"}, "no option 'hedaer'"),
])
def test_a_bad_tenants_table_is_one_sentence(tmp_path: Path, section: dict[str, object],
                                             message: str) -> None:
    (tmp_path / "tenancy.py").write_text("def f(request):\n    return None\n")
    with pytest.raises(ConfigError, match=message):
        load_tenants(tmp_path, {"tenants": section})
