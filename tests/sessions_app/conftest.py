import pytest

from tests import factories


@pytest.fixture
def re_pool(organization):
    return factories.LicensePoolFactory(organization=organization, product="RE", quota=3, machine_quota=3)


@pytest.fixture
def kse_pool(organization):
    return factories.LicensePoolFactory(organization=organization, product="KSE", quota=3, machine_quota=3)


@pytest.fixture
def api_key(member_user):
    return factories.ApiKeyFactory(user=member_user)


@pytest.fixture
def engine(client, api_key):
    """Calls the engine API with the member's key: engine.post(path, body, **headers)."""
    return Engine(client, api_key.raw_key)


class Engine:
    def __init__(self, client, raw_key):
        self.client = client
        self.raw_key = raw_key

    def headers(self, extra):
        headers = {"Authorization": f"Bearer {self.raw_key}"} if self.raw_key else {}
        headers.update(extra)
        return headers

    def post(self, path, body=None, **headers):
        return self.client.post(
            "/api/v1/" + path.lstrip("/"),
            data=body if body is not None else {},
            content_type="application/json",
            headers=self.headers(headers),
        )

    def get(self, path, **headers):
        return self.client.get("/api/v1/" + path.lstrip("/"), headers=self.headers(headers))

    def activate(self, product="RE", machine_id="agent-1", **fields):
        headers = fields.pop("headers", {})
        return self.post("engine/activate", {"product": product, "machine_id": machine_id, **fields}, **headers)
