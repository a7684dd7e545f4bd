"""The engine API's own Prometheus metrics (katalon_admin.operations serves them at /metrics).

Counting is one increment of a labelled counter in this process's memory (or, under gunicorn with
PROMETHEUS_MULTIPROC_DIR, in a memory-mapped file of its own): no lock shared between requests, no
database, no network, on the API's hot path."""

from prometheus_client import Counter

ACTIVATIONS = Counter(
    "katalon_activations",
    "Activation decisions: granted, queued, or refused by the refusal's error code "
    "(an Idempotency-Key replay is not a new decision and is not counted).",
    ["outcome"],
)


def count_activation(outcome):
    ACTIVATIONS.labels(outcome).inc()
