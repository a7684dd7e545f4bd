"""With the database out of reach the API answers 503 with Retry-After and grants nothing."""

import psycopg2
import pytest
from django.db import close_old_connections, connection

from licenses.signing import forget_loaded_keys
from sessions_app.models import EngineSession

from .conftest import Engine


class DatabaseOutOfReach:
    """Points the default connection at a database that cannot be reached, for real: the next query
    opens a new connection to it and fails. The test's own connection is put back afterwards."""

    def __enter__(self):
        self.settings = dict(connection.settings_dict)
        self.open_connection = connection.connection
        connection.connection = None
        if connection.vendor == "sqlite":
            connection.settings_dict["NAME"] = "/nonexistent-directory/katalon.sqlite3"
        else:
            connection.settings_dict.update(HOST="127.0.0.1", PORT="9")
            connection.settings_dict.setdefault("OPTIONS", {})["connect_timeout"] = 2
        return self

    def __exit__(self, *exc_info):
        if connection.connection is not None:
            connection.connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(self.settings)
        connection.connection = self.open_connection
        connection.close_if_unusable_or_obsolete()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path", ["engine/activate", "engine/sessions/s_abc/heartbeat", "engine/sessions/s_abc/release"]
)
def test_an_unreachable_database_is_a_503(client, api_key, re_pool, path):
    """Every engine call answers 503 service_unavailable with Retry-After, and no session is created."""
    engine = Engine(client, api_key.raw_key)
    with DatabaseOutOfReach():
        response = engine.post(path, {"product": "RE", "machine_id": "agent-1"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert int(response["Retry-After"]) >= 1
    assert response["X-Request-ID"]
    assert not EngineSession.objects.exists()
    assert engine.activate().status_code == 201


@pytest.mark.django_db(transaction=True)
def test_the_organizations_list_and_an_unloaded_public_key_are_503_too(client, api_key):
    """The organizations list needs the database, and so does the public key until this process has
    loaded it; both say so the same way."""
    forget_loaded_keys()
    with DatabaseOutOfReach():
        responses = [
            client.get("/api/v1/offline-licenses/public-key"),
            Engine(client, api_key.raw_key).get("engine/organizations"),
        ]
    for response in responses:
        assert response.status_code == 503
        assert response["Retry-After"]


@pytest.mark.django_db(transaction=True)
def test_a_loaded_public_key_is_served_without_the_database(client, db):
    """Once loaded, the public key is served from the process, so verifiers are not turned away when
    the database is."""
    assert client.get("/api/v1/offline-licenses/public-key").status_code == 200
    with DatabaseOutOfReach():
        assert client.get("/api/v1/offline-licenses/public-key").status_code == 200


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_dropped_connection_costs_one_503_then_is_replaced(client, api_key, re_pool):
    """Without CONN_HEALTH_CHECKS (a round trip per request) a connection the database dropped (a
    restart, a failover) fails the one request that finds it, as a 503 with Retry-After; Django
    closes it at that request's end, and the next request connects afresh."""
    engine = Engine(client, api_key.raw_key)
    assert engine.activate(machine_id="before").status_code == 201
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    settings = connection.settings_dict
    admin = psycopg2.connect(
        dbname="postgres", user=settings["USER"], host=settings["HOST"], port=settings["PORT"] or 5432
    )
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
    admin.close()
    response = engine.activate(machine_id="during")
    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    close_old_connections()  # what request_finished does in a served request (the test client skips it)
    assert engine.activate(machine_id="after").status_code == 201
    assert set(EngineSession.objects.values_list("machine__machine_id", flat=True)) == {"before", "after"}
