from django.urls import path

from . import views

urlpatterns = [
    path("api-keys/", views.api_keys, name="api_keys"),
    path("api-keys/new/", views.api_key_create, name="api_key_create"),
    path("api-keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("command-generator/", views.command_generator, name="command_generator"),
    path("command-generator/key/", views.command_generator_key, name="command_generator_key"),
]
