"""The product's URLs plus minimal reference views, served by the same gunicorn, middleware and
database as the engine API so that the benchmark can say how far the API is from what Django itself
costs for the same work (docs/PERFORMANCE.md). Benchmark-only: never part of the product's URLconf."""

from datetime import timedelta

from django.db import transaction
from django.db.models.functions import Now
from django.http import JsonResponse
from django.urls import include, path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from licenses.models import LicensePool
from sessions_app.models import EngineSession


@csrf_exempt
def activate(request, pool_id, machine_pk, user_pk):
    """The activation's core through the ORM: lock the pool row, count its live sessions, insert one."""
    with transaction.atomic():
        pool = LicensePool.objects.select_for_update().only("quota").get(pk=pool_id)
        live = EngineSession.objects.filter(pool_id=pool_id, ended_at__isnull=True, lease_expires_at__gt=Now()).count()
        if live >= pool.quota:
            return JsonResponse({"error": {"code": "session_quota_exceeded"}}, status=409)
        session = EngineSession.objects.create(
            pool_id=pool_id,
            machine_id=machine_pk,
            user_id=user_pk,
            lease_expires_at=timezone.now() + timedelta(minutes=5),
        )
    return JsonResponse(
        {"session": {"id": session.public_id}, "machine": {"machine_id": request.GET.get("m", "")}}, status=201
    )


@csrf_exempt
def release(request, session_id):
    """The release's core: one conditional UPDATE."""
    EngineSession.objects.filter(public_id=session_id, ended_at__isnull=True).update(
        ended_at=Now(), end_reason="released"
    )
    return JsonResponse({"session": {"id": session_id, "ended_at": "now"}})


@csrf_exempt
def heartbeat(request, session_id):
    """One indexed SELECT (the session by its unique public id), answered as JSON."""
    row = EngineSession.objects.filter(public_id=session_id).values_list("lease_expires_at", flat=True).first()
    return JsonResponse({"session": {"id": session_id, "lease_expires_at": row.isoformat() if row else None}})


urlpatterns = [
    path("bench/activate/<int:pool_id>/<int:machine_pk>/<int:user_pk>", activate),
    path("bench/sessions/<str:session_id>/release", release),
    path("bench/sessions/<str:session_id>/heartbeat", heartbeat),
    path("", include("katalon_admin.urls")),
]
